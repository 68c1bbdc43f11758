"""Chapter 1's code exercise: the grader passes the book's solution and fails typical slips."""

from __future__ import annotations

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "01_ink_in_water"


def test_grade_vp_variance_passes_the_solution_and_the_recursion() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_vp_variance(fns["vp_variance"]).status == "correct"

    def by_recursion(var0, beta, k):  # running v <- (1 - beta) v + beta k times: rounding accumulates, still correct
        v = var0
        for _ in range(k):
            v = (1 - beta) * v + beta
        return v

    assert graders.grade_vp_variance(by_recursion).status == "correct"


def test_grade_vp_variance_fails_typical_slips() -> None:
    def no_spring(var0, beta, k):  # the random walk's law Var_0 + k beta
        return var0 + k * beta

    def beta_to_the_k(var0, beta, k):  # 1 - beta^k for 1 - (1 - beta)^k
        return (1 - beta) ** k * var0 + 1 - beta**k

    def mean_factor(var0, beta, k):  # (1 - beta)^(k/2), the mean's factor, in front of Var_0
        return (1 - beta) ** (k / 2) * var0 + 1 - (1 - beta) ** k

    def point_start_only(var0, beta, k):  # forgets Var_0
        return 1 - (1 - beta) ** k

    for wrong in (no_spring, beta_to_the_k, mean_factor, point_start_only):
        grade = graders.grade_vp_variance(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)
    assert "simulated variance, var0=0, beta=0.05, k=20: 0.6521 vs 1" in str(graders.grade_vp_variance(no_spring))


def test_grade_vp_variance_reports_a_stub_and_bad_output() -> None:
    def vp_variance(var0, beta, k): ...

    assert str(graders.grade_vp_variance(vp_variance)) == "Exercise (variance of the VP walk): not attempted yet"
    assert graders.grade_vp_variance(lambda var0, beta, k: [var0, beta]).status == "not yet"
    assert "raised" in str(graders.grade_vp_variance(lambda var0, beta, k: 1 / 0))
