"""Chapter 4's code exercise: the grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import math

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "04_posterior"


def test_grade_mu_tilde_passes_the_solution() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_mu_tilde(fns["mu_tilde"]).status == "correct"


def test_grade_mu_tilde_fails_typical_slips() -> None:
    def bar_index_slip(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt):  # sqrt(alpha_bar_t) in c_1 (the break-it exercise)
        c1 = math.sqrt(alpha_bar_t) * beta_t / (1 - alpha_bar_t)
        c2 = math.sqrt(1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        return c1 * x0 + c2 * xt

    def swapped(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt):  # c_1 on x_t, c_2 on x_0
        c1 = math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)
        c2 = math.sqrt(1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        return c1 * xt + c2 * x0

    def no_root(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt):  # alpha_t for sqrt(alpha_t) in c_2
        c1 = math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)
        c2 = (1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        return c1 * x0 + c2 * xt

    for wrong in (bar_index_slip, swapped, no_root):
        grade = graders.grade_mu_tilde(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "mu_tilde at t = 1" in str(graders.grade_mu_tilde(bar_index_slip))


def test_grade_mu_tilde_stub_and_bad_input() -> None:
    def stub(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt): ...
    assert str(graders.grade_mu_tilde(stub)) == "Exercise (posterior mean): not attempted yet"
    shaped = graders.grade_mu_tilde(lambda abp, ab, b, x0, xt: x0.sum())
    assert shaped.status == "not yet" and "shape" in str(shaped)
