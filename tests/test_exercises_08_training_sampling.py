"""Chapter 8's code exercise: the grader passes the book's solution and fails the sampling slips of Appendix A."""

from __future__ import annotations

import math

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "08_training_sampling"


def _step(schedule, xt, eps, t, generator, coef=None, noise=None, last_noise=False, mean_root=None):
    # Algorithm 2's line 4 with one part replaceable: the coefficient of eps, the noise scale, the root under x_t
    alpha, beta = schedule.alphas[t].item(), schedule.betas[t].item()
    s = math.sqrt(schedule.one_minus_alpha_bars[t].item())
    c = beta / s if coef is None else coef(beta, s)
    root = math.sqrt(alpha) if mean_root is None else mean_root(schedule, t)
    mean = (xt - c * eps) / root
    if t == 1 and not last_noise:
        return mean
    z = torch.randn(xt.shape, generator=generator, dtype=xt.dtype)
    return mean + (math.sqrt(beta) if noise is None else noise(beta, s)) * z


def test_grade_reverse_step_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_reverse_step(fns["reverse_step"]).status == "correct"


def test_grade_reverse_step_passes_subtraction_and_global_noise() -> None:
    def plain(schedule, xt, eps, t, generator):  # 1 - alpha_bar_t by subtraction, z from the global generator
        alpha = schedule.alphas[t].item()
        mean = (xt - (1 - alpha) / math.sqrt(1 - schedule.alpha_bars[t].item()) * eps) / math.sqrt(alpha)
        return mean + (math.sqrt(1 - alpha) * torch.randn_like(xt) if t > 1 else 0.0)

    assert graders.grade_reverse_step(plain).status == "correct"


def test_grade_reverse_step_fails_the_sampling_slips() -> None:
    slips = {
        "A.12 sqrt(1 - alpha_t) on eps": (dict(coef=lambda beta, s: math.sqrt(beta) / s), "mean of x_(t-1) at t = 100"),
        "A.13 sigma^2 z": (dict(noise=lambda beta, s: beta), "variance of x_(t-1) at t = 100"),
        "A.14 noise / sqrt(1 - alpha_bar_t)": (dict(noise=lambda beta, s: math.sqrt(beta) / s), "variance of x_(t-1)"),
        "A.15 noise at t = 1": (dict(last_noise=True), "x_0 at t = 1"),
        "A.11 sqrt(alpha_bar_t) for sqrt(alpha_t)": (
            dict(mean_root=lambda sch, t: math.sqrt(sch.alpha_bars[t].item())), "mean of x_(t-1) at t = 100"),
    }
    for label, (kw, where) in slips.items():
        grade = graders.grade_reverse_step(lambda sch, xt, eps, t, g, kw=kw: _step(sch, xt, eps, t, g, **kw))
        assert grade.status == "not yet", (label, str(grade))
        assert where in str(grade) and "FAILED" in str(grade) and "\n" not in str(grade), (label, str(grade))


def test_grade_reverse_step_stub_and_bad_input() -> None:
    def stub(schedule, xt, eps, t, generator): ...
    assert str(graders.grade_reverse_step(stub)) == "Exercise (one reverse step): not attempted yet"
    shaped = graders.grade_reverse_step(lambda sch, xt, eps, t, g: xt[:, 0])
    assert shaped.status == "not yet" and "shape" in str(shaped)
    raised = graders.grade_reverse_step(lambda sch, xt, eps, t, g: sch.alphas[t + 1000])
    assert raised.status == "not yet" and "raised IndexError" in str(raised)
