"""Chapter 5's code exercise: the Gaussian KL grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "05_diffusion_elbo"


def test_grade_gaussian_kl_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_gaussian_kl(fns["gaussian_kl"]).status == "correct"


def test_grade_gaussian_kl_fails_typical_slips() -> None:
    def inverted_ratio(mp, vp, mq, vq):  # Appendix A.10: var_q / var_p (the break-it exercise)
        return 0.5 * (torch.log(vq / vp) + vq / vp + (mp - mq) ** 2 / vq - 1)

    def std_for_var(mp, vp, mq, vq):  # standard deviations where variances belong, in the mean term
        return 0.5 * (torch.log(vq / vp) + (vp + (mp - mq) ** 2) / vq.sqrt() - 1)

    def no_half(mp, vp, mq, vq):
        return torch.log(vq / vp) + (vp + (mp - mq) ** 2) / vq - 1

    def log_upside_down(mp, vp, mq, vq):  # log(var_p / var_q)
        return 0.5 * (torch.log(vp / vq) + (vp + (mp - mq) ** 2) / vq - 1)

    for wrong in (inverted_ratio, std_for_var, no_half, log_upside_down):
        grade = graders.grade_gaussian_kl(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "0.3725 vs 1.58" in str(graders.grade_gaussian_kl(inverted_ratio))  # the number the break-it solution quotes


def test_grade_gaussian_kl_stub_and_bad_input() -> None:
    def stub(mean_p, var_p, mean_q, var_q): ...
    assert str(graders.grade_gaussian_kl(stub)) == "Exercise (KL of two Gaussians): not attempted yet"
    raised = graders.grade_gaussian_kl(lambda mp, vp, mq, vq: float(mp))  # only works on one-element tensors
    assert raised.status == "not yet" and "\n" not in str(raised)
