"""Chapter 13's exercises: the grader of the code exercise passes the chapter's solution and fails typical slips."""

from __future__ import annotations

import torch

import exercise_utils as ex
from ddpm_lab import graders

CHAPTER = "13_digits"


def test_chapter_13_has_its_exercises() -> None:
    assert set(ex.exercise_labels(CHAPTER)) == {"ex-digits-pixel-bits", "ex-digits-level-count", "ex-digits-256-bins"}


def test_independent_pixel_bits_grader() -> None:
    fns = ex.solution_functions(CHAPTER)
    assert graders.grade_independent_pixel_bits(fns["independent_pixel_bits"]).status == "correct"

    def in_nats(levels, probs):  # slip: natural log, so nats/dim
        flat = torch.as_tensor(levels).reshape(len(levels), -1).long()
        return -torch.log(torch.as_tensor(probs)[torch.arange(64), flat]).mean(1)

    def summed(levels, probs):  # slip: bits per image, not per dimension
        flat = torch.as_tensor(levels).reshape(len(levels), -1).long()
        return -torch.log2(torch.as_tensor(probs)[torch.arange(64), flat]).sum(1)

    def first_pixel_histogram(levels, probs):  # slip: every pixel scored with pixel 0's histogram
        flat = torch.as_tensor(levels).reshape(len(levels), -1).long()
        return -torch.log2(torch.as_tensor(probs)[0, flat]).mean(1)

    for wrong in (in_nats, summed, first_pixel_histogram):
        grade = graders.grade_independent_pixel_bits(wrong)
        assert grade.status == "not yet", (wrong.__name__, str(grade))
    assert "log2 17: 2.833 vs 4.087" in str(graders.grade_independent_pixel_bits(in_nats))

    def stub(levels, probs): ...
    assert str(graders.grade_independent_pixel_bits(stub)).endswith(": not attempted yet")
