"""Chapter 14's exercises: each grader passes the chapter's solution and fails typical slips."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "14_cifar10"


def test_chapter_14_has_its_exercises() -> None:
    assert set(ex.exercise_labels(CHAPTER)) == {"ex-cifar-time-embedding", "ex-cifar-ema-warmup", "ex-cifar-frechet",
                                                "ex-cifar-resblock-params"}


def _embedding(denominator, order=("cos", "sin")):
    def emb(t, dim):
        h = dim // 2
        w = torch.exp(-math.log(10000.0) * torch.arange(h, dtype=torch.float64) / denominator(h))
        a = t.double()[:, None] * w
        return torch.cat([getattr(torch, f)(a) for f in order], 1)
    return emb


def test_sinusoidal_embedding_grader() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_sinusoidal_embedding(fns["sinusoidal_embedding"]).status == "correct"

    def float32(t, dim):  # a correct float32 implementation, written differently
        h = dim // 2
        a = t.float()[:, None] / 10000 ** (torch.arange(h).float() / h)
        return torch.cat([a.cos(), a.sin()], 1)
    assert graders.grade_sinusoidal_embedding(float32).status == "correct"

    wrongs = {"official code's h - 1": _embedding(lambda h: h - 1), "i / dim": _embedding(lambda h: 2 * h),
              "sin first": _embedding(lambda h: h, ("sin", "cos"))}
    for name, wrong in wrongs.items():
        grade = graders.grade_sinusoidal_embedding(wrong)
        assert grade.status == "not yet", (name, str(grade))

    def stub(t, dim): ...
    assert str(graders.grade_sinusoidal_embedding(stub)).endswith(": not attempted yet")


def test_ema_warmup_grader() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_ema_warmup(fns["ema_update"]).status == "correct"

    def lerp(ema, theta, rho, n):  # correct, in the lerp form (cancels at the start of the ramp)
        return ema.clone().lerp_(theta, 1 - min(rho, (1 + n) / (10 + n)))
    assert graders.grade_ema_warmup(lerp).status == "correct"

    def no_ramp(ema, theta, rho, n):
        return rho * ema + (1 - rho) * theta

    def no_min(ema, theta, rho, n):  # the ramp never stops
        r = (1 + n) / (10 + n)
        return r * ema + (1 - r) * theta

    def off_by_one(ema, theta, rho, n):
        r = min(rho, (2 + n) / (11 + n))
        return r * ema + (1 - r) * theta

    def swapped(ema, theta, rho, n):
        r = min(rho, (1 + n) / (10 + n))
        return (1 - r) * ema + r * theta

    for wrong in (no_ramp, no_min, off_by_one, swapped):
        grade = graders.grade_ema_warmup(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
    assert "residual after 300 updates, rho = 0.9" in str(graders.grade_ema_warmup(no_min))

    def stub(ema, theta, rho, n): ...
    assert str(graders.grade_ema_warmup(stub)).endswith(": not attempted yet")


def test_frechet_distance_grader() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_frechet_distance(fns["frechet_distance"]).status == "correct"

    def by_eigenvalues(mu1, sigma1, mu2, sigma2):  # correct: tr (S1 S2)^(1/2) = sum of sqrt of eigenvalues
        ev = np.linalg.eigvals(sigma1 @ sigma2).real.clip(0)
        d = mu1 - mu2
        return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(ev).sum())
    assert graders.grade_frechet_distance(by_eigenvalues).status == "correct"

    def elementwise_sqrt(mu1, sigma1, mu2, sigma2):  # right for diagonal covariances only
        d = mu1 - mu2
        return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.sqrt(np.abs(sigma1 * sigma2))))

    def no_factor_two(mu1, sigma1, mu2, sigma2):
        d = mu1 - mu2
        return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - np.trace(linalg.sqrtm(sigma1 @ sigma2).real))

    def product_of_roots(mu1, sigma1, mu2, sigma2):  # S1^(1/2) S2^(1/2): right when they commute only
        c = linalg.sqrtm(sigma1).real @ linalg.sqrtm(sigma2).real
        d = mu1 - mu2
        return float(d @ d + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(c))

    def raises(mu1, sigma1, mu2, sigma2):
        return float(mu1 @ sigma1)  # shapes (6,) @ (6, 6) fine, but then float() of an array raises
    for wrong in (elementwise_sqrt, no_factor_two, product_of_roots, raises):
        grade = graders.grade_frechet_distance(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
    assert "full covariances vs ddpm_lab.metrics.frechet_distance" in str(graders.grade_frechet_distance(elementwise_sqrt))

    def stub(mu1, sigma1, mu2, sigma2): ...
    assert str(graders.grade_frechet_distance(stub)).endswith(": not attempted yet")
