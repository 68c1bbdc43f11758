"""The notation page (book/notation.md) names package objects; every name must exist.

Every backticked span that starts with ``ddpm_lab`` must be a plain dotted name that resolves: the longest
importable module prefix is imported, then the rest is looked up attribute by attribute. A dataclass field
without a class-level default (``NoiseSchedule.alpha_bars``, ``GaussianMixture.weights``, ...) exists only on
instances; it is accepted as the last component when it is one of ``dataclasses.fields`` of the class. The page
also writes arguments as "`ddpm_lab.f` argument `x`" (or "arguments `x`, `y`"): each such argument must be a
parameter of the resolved callable. A misspelled name or argument is reported, never skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "book" / "notation.md"

# The page has this many distinct fully qualified names (with at least one dot); removing rows fails the test.
MIN_NAMES = 126

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"ddpm_lab(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ARGUMENTS = re.compile(r"`(ddpm_lab(?:\.\w+)+)`\s+arguments?\s+(`\w+`(?:\s*,\s*`\w+`)*)")


def resolve(name: str) -> object:
    """The object a dotted ``ddpm_lab`` name refers to; ``LookupError`` (naming the culprit) if there is none."""
    if not _DOTTED.fullmatch(name):
        raise LookupError(f"{name!r} is not a plain dotted ddpm_lab name")
    parts = name.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        prefix = ".".join(parts[:i])
        last = i == len(parts) - 1
        if inspect.ismodule(obj) and not hasattr(obj, part):
            try:  # a submodule not yet imported by its package
                obj = importlib.import_module(f"{prefix}.{part}")
                continue
            except ModuleNotFoundError as exc:
                if exc.name != f"{prefix}.{part}":
                    raise  # a real import error inside the package, not a missing name
                raise LookupError(f"{name}: module {prefix} has no attribute or submodule {part!r}") from None
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            field = next((f for f in dataclasses.fields(obj) if f.name == part), None)
            if field is not None:
                if not last:
                    raise LookupError(f"{name}: {prefix}.{part} is a dataclass field; nothing can follow it")
                return field
        raise LookupError(f"{name}: {prefix} has no attribute {part!r}")
    return obj


def check_page(text: str) -> tuple[set[str], list[str]]:
    """(the dotted names found, the problems): every ddpm_lab code span and every named argument is checked."""
    names: set[str] = set()
    problems: list[str] = []
    for span in _CODE_SPAN.findall(text):
        span = span.strip()
        if span != "ddpm_lab" and not span.startswith("ddpm_lab."):
            continue
        try:
            resolve(span)
        except LookupError as exc:
            problems.append(str(exc))
            continue
        if "." in span:
            names.add(span)
    for name, args in _ARGUMENTS.findall(text):
        try:
            obj = resolve(name)
        except LookupError:
            continue  # already reported above
        try:
            params = inspect.signature(obj).parameters  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problems.append(f"{name} is given arguments but has no signature")
            continue
        for arg in re.findall(r"`(\w+)`", args):
            if arg not in params:
                problems.append(f"{name} has no argument {arg!r} (it has {list(params)})")
    return names, problems


def test_every_ddpm_lab_name_on_the_notation_page_resolves() -> None:
    names, problems = check_page(PAGE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)
    assert len(names) >= MIN_NAMES, f"only {len(names)} distinct ddpm_lab names on the page (expected >= {MIN_NAMES})"


@pytest.mark.parametrize("name", [
    "ddpm_lab.diffusion.q_sample",
    "ddpm_lab.schedules.NoiseSchedule.alpha_bars",  # a field that exists only on instances
    "ddpm_lab.schedules.NoiseSchedule.T",  # a property
    "ddpm_lab.schedules.NoiseSchedule.linear",
    "ddpm_lab.gaussians.GaussianMixture.weights",
    "ddpm_lab.train.TrainConfig.ema_decay",  # a field with a default (a class attribute)
    "ddpm_lab.NoiseSchedule",  # re-exported by the package
])
def test_resolver_accepts_real_names(name: str) -> None:
    resolve(name)


@pytest.mark.parametrize("name", [
    "ddpm_lab.diffusion.q_sampel",  # misspelled function
    "ddpm_lab.diffusoin.q_sample",  # misspelled module
    "ddpm_lab.schedules.NoiseSchedule.alpha_bar",  # misspelled instance-only field
    "ddpm_lab.schedules.NoiseSchedule.alpha_bars.cumsum",  # nothing can be resolved below a field
    "ddpm_lab.gaussians.GaussianMixture.weight",
    "ddpm_lab.train.TrainConfig.ema",
    "ddpm_lab.diffusion.q_sample(x0)",  # not a plain dotted name
])
def test_resolver_rejects_misspelled_names(name: str) -> None:
    with pytest.raises(LookupError):
        resolve(name)


def test_a_page_with_a_bogus_name_or_argument_fails() -> None:
    page = PAGE.read_text(encoding="utf-8")
    _, problems = check_page(page + "\n| $q$ | a typo | `ddpm_lab.diffusion.q_sampel` | — |\n")
    assert any("q_sampel" in p for p in problems), problems
    _, problems = check_page(page + "\n`ddpm_lab.diffusion.ddim_step` argument `etaa`\n")
    assert any("etaa" in p for p in problems), problems
    _, problems = check_page("`ddpm_lab.schedules.NoiseSchedule.linear` arguments `T`, `beta_one`")
    assert problems == ["ddpm_lab.schedules.NoiseSchedule.linear has no argument 'beta_one' "
                        "(it has ['T', 'beta_1', 'beta_T'])"], problems
