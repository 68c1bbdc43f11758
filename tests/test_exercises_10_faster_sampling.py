"""Chapter 10's code exercise: the grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import math

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "10_faster_sampling"


def _sigma(alpha_bar_t, alpha_bar_prev, eta):
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def _x0_hat(alpha_bar_t, eps, xt):
    return (xt - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


def test_grade_ddim_step_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    grade = graders.grade_ddim_step(fns["ddim_step"])
    assert grade.status == "correct", str(grade)


def test_grade_ddim_step_fails_typical_slips() -> None:
    def no_room(alpha_bar_t, alpha_bar_prev, eps, xt, eta, z):  # sqrt(1 - abar_prev) on eps: the slip of 10.3
        s = _sigma(alpha_bar_t, alpha_bar_prev, eta)
        return math.sqrt(alpha_bar_prev) * _x0_hat(alpha_bar_t, eps, xt) + math.sqrt(1 - alpha_bar_prev) * eps + s * z

    def sigma_squared(alpha_bar_t, alpha_bar_prev, eps, xt, eta, z):  # sigma^2 z (A.13, the break-it exercise)
        s = _sigma(alpha_bar_t, alpha_bar_prev, eta)
        return (math.sqrt(alpha_bar_prev) * _x0_hat(alpha_bar_t, eps, xt)
                + math.sqrt(1 - alpha_bar_prev - s**2) * eps + s**2 * z)

    def eta_ignored(alpha_bar_t, alpha_bar_prev, eps, xt, eta, z):  # always eta = 1: keeps the marginals, not the step
        s = _sigma(alpha_bar_t, alpha_bar_prev, 1.0)
        return (math.sqrt(alpha_bar_prev) * _x0_hat(alpha_bar_t, eps, xt)
                + math.sqrt(1 - alpha_bar_prev - s**2) * eps + s * z)

    for wrong in (no_room, sigma_squared, eta_ignored):
        grade = graders.grade_ddim_step(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "variance of x_prev" in str(graders.grade_ddim_step(no_room))
    assert "vs diffusion.ddim_step" in str(graders.grade_ddim_step(eta_ignored))


def test_grade_ddim_step_stub_and_bad_input() -> None:
    def ddim_step(alpha_bar_t, alpha_bar_prev, eps, xt, eta, z): ...
    assert str(graders.grade_ddim_step(ddim_step)) == "Exercise (one DDIM step): not attempted yet"
    shaped = graders.grade_ddim_step(lambda ab, abp, eps, xt, eta, z: xt.sum(0))
    assert shaped.status == "not yet" and "shape" in str(shaped)
