"""Chapter 6's code exercises: the conversion graders pass the book's solutions and fail typical slips."""

from __future__ import annotations

import math

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "06_parameterizations"


def test_graders_pass_the_solutions() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_x0_from_eps(fns["x0_from_eps"]).status == "correct"
    assert graders.grade_x0_from_v(fns["x0_from_velocity"]).status == "correct"


def test_grade_x0_from_eps_fails_typical_slips() -> None:
    def no_root(ab, xt, eps):  # Appendix A.1: 1 - alpha_bar where its square root belongs
        return (xt - (1 - ab) * eps) / math.sqrt(ab)

    def times_a(ab, xt, eps):  # multiplied by a_t instead of divided
        return (xt - math.sqrt(1 - ab) * eps) * math.sqrt(ab)

    def plus(ab, xt, eps):
        return (xt + math.sqrt(1 - ab) * eps) / math.sqrt(ab)

    for wrong in (no_root, times_a, plus):
        grade = graders.grade_x0_from_eps(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)


def test_grade_x0_from_v_fails_typical_slips() -> None:
    def sign(ab, xt, v):  # the rotation's inverse with the wrong sign
        return math.sqrt(ab) * xt + math.sqrt(1 - ab) * v

    def swapped(ab, xt, v):  # a_t and s_t swapped (that is eps from v, with the sign of v flipped)
        return math.sqrt(1 - ab) * xt - math.sqrt(ab) * v

    def not_inverted(ab, xt, v):  # divided by a_t as if x_t = a_t x_0 - s_t v
        return (xt + math.sqrt(1 - ab) * v) / math.sqrt(ab)

    for wrong in (sign, swapped, not_inverted):
        grade = graders.grade_x0_from_v(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
        assert "FAILED" in str(grade) and "\n" not in str(grade)


def test_stubs_are_not_attempted() -> None:
    def x0_from_eps(alpha_bar_t, xt, eps): ...
    def x0_from_velocity(alpha_bar_t, xt, v): ...
    assert str(graders.grade_x0_from_eps(x0_from_eps)) == "Exercise (x_0 from the noise): not attempted yet"
    assert str(graders.grade_x0_from_v(x0_from_velocity)) == "Exercise (x_0 from v): not attempted yet"
