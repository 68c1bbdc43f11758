"""Chapter 12's code exercises: the graders pass the book's solutions and fail typical slips."""

from __future__ import annotations

import math

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "12_flow_matching"


def test_graders_pass_the_solutions() -> None:
    fns = ex.solution_functions(CHAPTER)
    for grade in (graders.grade_straight_velocity(fns["straight_velocity"]),
                  graders.grade_continuous_bound(fns["continuous_bound"])):
        assert grade.status == "correct", str(grade)


def test_grade_straight_velocity_fails_typical_slips() -> None:
    def mixed_forms(x, t, x0_hat):  # x0_hat subtracted twice
        return (x - x0_hat) / t - x0_hat

    def eps_hat(x, t, x0_hat):  # E[eps | x_t] alone, forgetting the - E[x_0 | x_t] (a_t' = -1)
        return (x - (1 - t) * x0_hat) / t

    def sign(x, t, x0_hat):  # the velocity of sampling (x_0 - eps) instead of (eps - x_0)
        return (x0_hat - x) / t

    for wrong in (mixed_forms, eps_hat, sign):
        grade = graders.grade_straight_velocity(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "vs flows.mixture_velocity" in str(grade) and "FAILED" in str(grade)


def test_grade_continuous_bound_fails_typical_slips() -> None:
    def no_half(snr_min, snr_max, data_var):
        return math.log((1 + data_var * snr_max) / (1 + data_var * snr_min))

    def var_outside(snr_min, snr_max, data_var):  # mmse = s^2 / (1 + gamma): s^2 forgotten in the denominator
        return 0.5 * data_var * math.log((1 + snr_max) / (1 + snr_min))

    def snr_ratio(snr_min, snr_max, data_var):  # the large-SNR limit used everywhere (and log 0 at SNR_min = 0)
        return 0.5 * math.log(snr_max / snr_min)

    for wrong in (no_half, var_outside, snr_ratio):
        grade = graders.grade_continuous_bound(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "\n" not in str(grade)
    assert "(1/2) int mmse d gamma" in str(graders.grade_continuous_bound(no_half))


def test_graders_stub_and_bad_input() -> None:
    def straight_velocity(x, t, x0_hat): ...
    def continuous_bound(snr_min, snr_max, data_var): ...
    assert str(graders.grade_straight_velocity(straight_velocity)) == \
        "Exercise (the straight-path velocity): not attempted yet"
    assert str(graders.grade_continuous_bound(continuous_bound)) == \
        "Exercise (the continuous-time bound): not attempted yet"
    shaped = graders.grade_continuous_bound(lambda lo, hi, v: [lo, hi])
    assert shaped.status == "not yet" and "shape" in str(shaped)
