"""Chapter 3's code exercise: the grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "03_forward_process"


def _alpha_bar(betas, t):
    return torch.prod(1 - betas[:t])


def test_grade_q_sample_from_betas_passes_the_solution_and_a_cumprod() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_q_sample_from_betas(fns["q_sample_from_betas"]).status == "correct"

    def by_cumprod(betas, x0, t, eps):  # alpha_bar_0..T at once, indexed by t
        alpha_bars = torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, 0)])
        return alpha_bars[t].sqrt() * x0 + (1 - alpha_bars[t]).sqrt() * eps

    assert graders.grade_q_sample_from_betas(by_cumprod).status == "correct"


def test_grade_q_sample_from_betas_fails_typical_slips() -> None:
    def no_root_in_mean(betas, x0, t, eps):  # alpha_bar_t x0 (the chapter's slip)
        ab = _alpha_bar(betas, t)
        return ab * x0 + (1 - ab).sqrt() * eps

    def no_root_in_noise(betas, x0, t, eps):  # (1 - alpha_bar_t) eps (the break-it exercise)
        ab = _alpha_bar(betas, t)
        return ab.sqrt() * x0 + (1 - ab) * eps

    def off_by_one(betas, x0, t, eps):  # one factor too many
        ab = _alpha_bar(betas, t + 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def last_alpha_only(betas, x0, t, eps):  # sqrt(alpha_t) for sqrt(alpha_bar_t) (Appendix A)
        a = 1 - betas[t - 1] if t > 0 else torch.tensor(1.0, dtype=betas.dtype)
        return a.sqrt() * x0 + (1 - _alpha_bar(betas, t)).sqrt() * eps

    def one_minus_sum(betas, x0, t, eps):  # alpha_bar_t = 1 - sum of betas (Appendix A)
        ab = (1 - betas[:t].sum()).clamp_min(0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    for wrong in (no_root_in_mean, no_root_in_noise, off_by_one, last_alpha_only, one_minus_sum):
        grade = graders.grade_q_sample_from_betas(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "t = 100: mean of your x_t vs Eq. 4: 0.7171 vs 0.7577" in str(graders.grade_q_sample_from_betas(no_root_in_mean))


def test_grade_q_sample_from_betas_reports_a_stub_and_bad_output() -> None:
    def q_sample_from_betas(betas, x0, t, eps): ...

    assert graders.grade_q_sample_from_betas(q_sample_from_betas).status == "not attempted"
    grade = graders.grade_q_sample_from_betas(lambda betas, x0, t, eps: x0.sum())
    assert grade.status == "not yet" and "shape ()" in str(grade)
