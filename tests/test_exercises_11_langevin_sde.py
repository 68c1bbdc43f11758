"""Chapter 11's code exercises: the graders pass the book's solutions and fail typical slips."""

from __future__ import annotations

import math

import torch

import exercise_utils as ex
from ddpm_lab import graders
from ddpm_lab.schedules import vp_beta

CHAPTER = "11_langevin_sde"


def test_graders_pass_the_solutions() -> None:
    fns = ex.solution_functions(CHAPTER)
    for grade in (graders.grade_langevin_step(fns["langevin_step"]), graders.grade_pf_ode_drift(fns["pf_ode_drift"])):
        assert grade.status == "correct", str(grade)


def test_grade_langevin_step_fails_typical_slips() -> None:
    def no_half(x, score, h, z):  # h score: the slip of Section 11.1
        return x + h * score(x) + math.sqrt(h) * z

    def noise_h(x, score, h, z):  # h z: the variance h used as a standard deviation
        return x + 0.5 * h * score(x) + h * z

    def own_noise(x, score, h, z):  # right law, but ignores the z it was given
        return x + 0.5 * h * score(x) + math.sqrt(h) * torch.randn_like(x)

    for wrong in (no_half, noise_h, own_noise):
        grade = graders.grade_langevin_step(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "stationary variance" in str(graders.grade_langevin_step(no_half))
    assert "vs sde.langevin" in str(graders.grade_langevin_step(own_noise))


def test_grade_pf_ode_drift_fails_typical_slips() -> None:
    def no_half(x, t, score):  # f - g^2 score: the break-it exercise (the reverse SDE's drift)
        return -0.5 * vp_beta(t) * x - vp_beta(t) * score(x, t)

    def sign(x, t, score):  # f + g^2 score / 2
        return -0.5 * vp_beta(t) * (x - score(x, t))

    for wrong in (no_half, sign):
        grade = graders.grade_pf_ode_drift(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "velocity vs sde.pf_ode_drift" in str(grade) and "FAILED" in str(grade)


def test_graders_stub_and_bad_input() -> None:
    def langevin_step(x, score, h, z): ...
    def pf_ode_drift(x, t, score): ...
    assert str(graders.grade_langevin_step(langevin_step)) == "Exercise (one Langevin step): not attempted yet"
    assert str(graders.grade_pf_ode_drift(pf_ode_drift)) == "Exercise (the probability-flow velocity): not attempted yet"
    raised = graders.grade_pf_ode_drift(lambda x, t, score: score(x))
    assert raised.status == "not yet" and "raised TypeError" in str(raised)
