"""Chapter 7's code exercise: the grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import math

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "07_tweedie"


def _parts(xt, a, s2, weights, means, variances, diffused=True, normalized=True):
    # responsibilities and the diffused components' variances (or, for the slip, those of q(x_0))
    C = a**2 * variances + s2 if diffused else variances
    diff = xt[:, None] - (a * means if diffused else means)
    log_dens = torch.log(weights) - diff**2 / (2 * C) - (0.5 * torch.log(C) if normalized else 0.0)
    return torch.softmax(log_dens, dim=1), diff, C


def test_grade_tweedie_denoiser_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_tweedie_denoiser(fns["tweedie_denoiser"]).status == "correct"


def test_grade_tweedie_denoiser_passes_enumeration_and_plain_exp() -> None:
    def enumeration(xt, a, s2, weights, means, variances):  # the posterior mean by components (Sec. 7.2)
        resp, diff, C = _parts(xt, a, s2, weights, means, variances)
        return (resp * (means + a * variances * diff / C)).sum(1)

    def plain_exp(xt, a, s2, weights, means, variances):  # densities without log-sum-exp
        C = a**2 * variances + s2
        diff = xt[:, None] - a * means
        dens = weights * torch.exp(-diff**2 / (2 * C)) / torch.sqrt(2 * math.pi * C)
        return (xt - s2 * (dens * diff / C).sum(1) / dens.sum(1)) / a

    for fn in (enumeration, plain_exp):
        assert graders.grade_tweedie_denoiser(fn).status == "correct", fn.__name__


def test_grade_tweedie_denoiser_fails_typical_slips() -> None:
    def s_for_s2(xt, a, s2, weights, means, variances):  # a step of size s (the first slip of Sec. 7.5)
        resp, diff, C = _parts(xt, a, s2, weights, means, variances)
        return (xt - math.sqrt(s2) * (resp * diff / C).sum(1)) / a

    def divided_by_alpha_bar(xt, a, s2, weights, means, variances):  # a^2 for a
        resp, diff, C = _parts(xt, a, s2, weights, means, variances)
        return (xt - s2 * (resp * diff / C).sum(1)) / a**2

    def unnormalized(xt, a, s2, weights, means, variances):  # responsibilities without C_k^(-1/2)
        resp, diff, C = _parts(xt, a, s2, weights, means, variances, normalized=False)
        return (xt - s2 * (resp * diff / C).sum(1)) / a

    def score_of_data(xt, a, s2, weights, means, variances):  # grad log q(x_0) in place of grad log q(x_t)
        resp, diff, C = _parts(xt, a, s2, weights, means, variances, diffused=False)
        return (xt - s2 * (resp * diff / C).sum(1)) / a

    for wrong in (s_for_s2, divided_by_alpha_bar, unnormalized, score_of_data):
        grade = graders.grade_tweedie_denoiser(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "E[x0 | x_t] at t = 1:" in str(graders.grade_tweedie_denoiser(s_for_s2))


def test_grade_tweedie_denoiser_stub_and_bad_input() -> None:
    def stub(xt, a, s2, weights, means, variances): ...
    assert str(graders.grade_tweedie_denoiser(stub)) == "Exercise (Tweedie's denoiser): not attempted yet"
    shaped = graders.grade_tweedie_denoiser(lambda xt, a, s2, w, m, v: xt[:, None] * m)
    assert shaped.status == "not yet" and "shape" in str(shaped)
