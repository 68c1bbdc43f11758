"""Chapter 2's code exercises: the graders pass the book's solutions and fail typical slips."""

from __future__ import annotations

import math

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "02_latent_variables_elbo"


def _kl(m1, S1, m2, S2):
    k = m1.shape[0]
    S2_inv = torch.linalg.inv(S2)
    d = m2 - m1
    return 0.5 * (torch.trace(S2_inv @ S1) + d @ S2_inv @ d - k + torch.logdet(S2) - torch.logdet(S1))


def _elbo(W, b, sigma, x, m, v, trace_term=True):
    r = x - b - W @ m
    extra = (W**2).sum(0) @ v if trace_term else 0.0
    rec = -0.5 * W.shape[0] * math.log(2 * math.pi * sigma**2) - (r @ r + extra) / (2 * sigma**2)
    return rec - 0.5 * (v + m**2 - 1 - torch.log(v)).sum()


def test_the_graders_pass_the_solutions() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_kl_gaussians_full(fns["kl_gaussians_full"]).status == "correct"
    assert graders.grade_elbo_closed(fns["elbo_closed"]).status == "correct"

    def kl_by_cholesky(m1, S1, m2, S2):  # another correct route: solves with the Cholesky factor of S2
        L = torch.linalg.cholesky(S2)
        d = (m2 - m1).unsqueeze(-1)
        maha = torch.cholesky_solve(d, L).squeeze(-1) @ (m2 - m1)
        tr = torch.trace(torch.cholesky_solve(S1, L))
        logdet2 = 2 * torch.log(torch.diagonal(L)).sum()
        return 0.5 * (tr + maha - m1.shape[0] + logdet2 - torch.linalg.slogdet(S1)[1])

    assert graders.grade_kl_gaussians_full(kl_by_cholesky).status == "correct"


def test_grade_kl_gaussians_full_fails_typical_slips() -> None:
    wrongs = {
        "reversed": lambda m1, S1, m2, S2: _kl(m2, S2, m1, S1),  # KL(p || q), the slip of Section 2.3
        "no -k": lambda m1, S1, m2, S2: _kl(m1, S1, m2, S2) + 0.5 * m1.shape[0],
        "S2 not inverted": lambda m1, S1, m2, S2: _kl(m1, S1, m2, S2) + 0.5 * torch.trace((S2 - torch.linalg.inv(S2)) @ S1),
        "log dets swapped": lambda m1, S1, m2, S2: _kl(m1, S1, m2, S2) + torch.logdet(S1) - torch.logdet(S2),
    }
    for label, wrong in wrongs.items():
        grade = graders.grade_kl_gaussians_full(wrong)
        assert grade.status == "not yet", (label, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "KL, pair 1 (k = 1): 0.8153 vs 1.183" in str(graders.grade_kl_gaussians_full(wrongs["reversed"]))


def test_grade_elbo_closed_fails_typical_slips() -> None:
    wrongs = {
        "no variance term": lambda W, b, sigma, x, m, v: _elbo(W, b, sigma, x, m, v, trace_term=False),  # break-it
        "sd for variance": lambda W, b, sigma, x, m, v: _elbo(W, b, sigma, x, m, v.sqrt()),
        "no -1 in the KL": lambda W, b, sigma, x, m, v: _elbo(W, b, sigma, x, m, v) - 0.5 * m.shape[0],
        "sigma for sigma^2": lambda W, b, sigma, x, m, v: _elbo(W, b, math.sqrt(sigma), x, m, v),
    }
    for label, wrong in wrongs.items():
        grade = graders.grade_elbo_closed(wrong)
        assert grade.status == "not yet", (label, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "model 1, q 1: 28.75 vs 32.93" in str(graders.grade_elbo_closed(wrongs["no variance term"]))


def test_the_graders_report_stubs_and_bad_output() -> None:
    def kl_gaussians_full(m1, S1, m2, S2): ...

    def elbo_closed(W, b, sigma, x, m, v): ...

    assert graders.grade_kl_gaussians_full(kl_gaussians_full).status == "not attempted"
    assert graders.grade_elbo_closed(elbo_closed).status == "not attempted"
    shaped = graders.grade_elbo_closed(lambda W, b, sigma, x, m, v: torch.zeros(2))
    assert shaped.status == "not yet" and "shape (2,)" in str(shaped)
