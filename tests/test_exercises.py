"""The exercises: every chapter has some, every code exercise's grader passes its solution and fails wrong
answers (tests/test_exercises_<chapter>.py), and the stored notebooks keep every stub unattempted.

The grader core (ddpm_lab.graders: Grade, call, verdict) is tested here on small functions written out below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import exercise_utils as ex
from ddpm_lab import checks, graders

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
GRADERS = sorted(n for n in graders.__all__ if n.startswith("grade_"))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_exercises_with_solutions(chapter: str) -> None:
    labels = ex.exercise_labels(chapter)
    assert len(labels) >= 3, f"{chapter}: {len(labels)} exercises (at least 3)"
    assert len(set(labels)) == len(labels)
    solutions = ex.solution_sources(chapter)
    assert set(labels) <= set(solutions), f"exercises without a solution: {sorted(set(labels) - set(solutions))}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_stored_stubs_are_not_attempted(chapter: str) -> None:
    for text in ex.grading_outputs(chapter):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert lines and all(ln.endswith(": not attempted yet") for ln in lines), text


@pytest.mark.parametrize("name", GRADERS)
def test_every_grader_is_tested_on_a_solution_and_a_wrong_answer(name: str) -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_exercises_*.py"))
    assert len(re.findall(rf"\b{name}\b", tests)) >= 2, f"{name} is not exercised by a tests/test_exercises_*.py"
    assert getattr(graders, name).__doc__, f"{name} has no docstring naming its equation"


def test_every_grading_cell_names_a_grader() -> None:
    for chapter in CHAPTERS:
        for c in ex.notebook(chapter).cells:
            if c.cell_type == "code" and "exercise-grade" in c.metadata.get("tags", []):
                assert re.search(r"\bgrade_\w+\(", c.source), (chapter, c.source)


# --- the core, on functions written out here -------------------------------------------------
def _grader(fn):
    def body():
        return [checks.exact_check(graders.as_tensor(graders.call(fn, 2.0), ()), 4.0, name="square of 2")]
    return graders.verdict("Exercise (square)", body)


def test_core_reports_the_four_outcomes_in_one_line() -> None:
    def stub(x): ...
    def todo(x): raise NotImplementedError
    assert str(_grader(stub)) == "Exercise (square): not attempted yet"
    assert str(_grader(todo)) == "Exercise (square): not attempted yet"
    assert str(_grader(lambda x: x * x)) == "Exercise (square): correct (1 check passed)"
    wrong = _grader(lambda x: x + x + 0.5)
    assert wrong.status == "not yet" and "square of 2: 4.5 vs 4" in str(wrong) and "FAILED" in str(wrong)
    raised = _grader(lambda x: 1 / 0)
    assert str(raised) == "Exercise (square): not yet: your function raised ZeroDivisionError: division by zero"
    shaped = _grader(lambda x: torch.ones(3))
    assert str(shaped) == "Exercise (square): not yet: your function's result has shape (3,), expected ()"
    nan = _grader(lambda x: float("nan"))
    assert "non-finite" in str(nan) and "\n" not in str(nan)
    assert str(_grader(42)).startswith("Exercise (square): not yet: expected a function, got int")


def test_a_grader_that_makes_no_check_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="made no check"):
        graders.verdict("Exercise (empty)", lambda: [])
