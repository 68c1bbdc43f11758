"""Chapter 9's code exercise: the grader passes the book's solution and fails typical slips of the decoder."""

from __future__ import annotations

import math

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "09_bits_per_dim"


def _decoder(x, mean, sd, half=1 / 255, edges=True, clamp=None):
    # log of the Gaussian mass of [x - half, x + half], edge bins to +-inf if ``edges``
    upper = torch.special.ndtr((x + half - mean) / sd)
    lower = torch.special.ndtr((x - half - mean) / sd)
    if edges:
        upper = torch.where(x < 1, upper, torch.ones_like(x))
        lower = torch.where(x > -1, lower, torch.zeros_like(x))
    p = upper - lower
    return torch.log(p if clamp is None else p.clamp(min=clamp))


def test_grade_decoder_log_prob_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_decoder_log_prob(fns["decoder_log_prob"]).status == "correct"


def test_grade_decoder_log_prob_passes_an_erf_version() -> None:
    def with_erf(x, mean, sd):
        cdf = lambda v: 0.5 * (1 + torch.erf(v / math.sqrt(2)))  # noqa: E731
        upper = torch.where(x < 1, cdf((x + 1 / 255 - mean) / sd), torch.ones_like(x))
        lower = torch.where(x > -1, cdf((x - 1 / 255 - mean) / sd), torch.zeros_like(x))
        return torch.log(upper - lower)

    assert graders.grade_decoder_log_prob(with_erf).status == "correct"


def test_grade_decoder_log_prob_fails_typical_slips() -> None:
    slips = {
        "no edge bins": (lambda x, m, sd: _decoder(x, m, sd, edges=False), "sum of the 256 probabilities, mean 0.0"),
        "half-width 1/127.5": (lambda x, m, sd: _decoder(x, m, sd, half=1 / 127.5), "sum of the 256 probabilities"),
        "variance for sd": (lambda x, m, sd: _decoder(x, m, sd**2), "bin probabilities"),
        "clamped at 1e-12": (lambda x, m, sd: _decoder(x, m, sd, clamp=1e-12), "sum of the 256 probabilities"),
        "density times bin width": (lambda x, m, sd: -0.5 * math.log(2 * math.pi * sd**2) - (x - m) ** 2 / (2 * sd**2)
                                    + math.log(2 / 255), "sum of the 256 probabilities"),
    }
    for label, (fn, where) in slips.items():
        grade = graders.grade_decoder_log_prob(fn)
        assert grade.status == "not yet", (label, str(grade))
        assert where in str(grade) and "FAILED" in str(grade) and "\n" not in str(grade), (label, str(grade))


def test_grade_decoder_log_prob_stub_and_bad_input() -> None:
    def stub(x, mean, sd): ...
    assert str(graders.grade_decoder_log_prob(stub)) == "Exercise (the discretized decoder): not attempted yet"
    shaped = graders.grade_decoder_log_prob(lambda x, m, sd: x[:10])
    assert shaped.status == "not yet" and "shape" in str(shaped)
    nan = graders.grade_decoder_log_prob(lambda x, m, sd: torch.full_like(x, float("nan")))
    assert nan.status == "not yet" and "NaN" in str(nan) and "\n" not in str(nan)
