"""Graders for the book's exercises: the reader writes a function, a grader runs the book's own checks on it.

Every grader takes the reader's function (and nothing the reader could get wrong), calls it on inputs it draws
itself, compares the answer with an independent route (a closed form, Monte Carlo, Bayes on a grid, an exact
mixture) at the tolerance the chapter derived, and returns a :class:`Grade` that prints as one line:

    <exercise>: not attempted yet
    <exercise>: correct (<n> checks passed)
    <exercise>: not yet: <the first check that failed, with its numbers>

A stub whose body is ``...`` (it returns None) or that raises ``NotImplementedError`` is "not attempted yet".
A function that raises, or returns the wrong shape or a non-finite value, gets "not yet" with the reason, never a
traceback. Each grader's docstring names the equation it checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch

from . import checks
from .checks import CheckResult
from .diffusion import q_posterior
from .schedules import NoiseSchedule

__all__ = ["Grade", "NotAttempted", "GraderInputError", "call", "as_tensor", "verdict"]

Status = Literal["not attempted", "correct", "not yet"]


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one exercise; ``str(grade)`` is the one line a grading cell prints."""

    exercise: str
    status: Status
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        if self.status == "not attempted":
            return f"{self.exercise}: not attempted yet"
        if self.status == "correct":
            return f"{self.exercise}: correct ({self.detail})" if self.detail else f"{self.exercise}: correct"
        return f"{self.exercise}: not yet: {self.detail}"


class NotAttempted(Exception):
    """The reader's function is still the stub."""


class GraderInputError(Exception):
    """The reader's function returned something the grader cannot compare (shape, type, NaN): a 'not yet'."""


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the reader's function. A stub (returns None or Ellipsis, or raises NotImplementedError) raises
    :class:`NotAttempted`; any other exception propagates to :func:`verdict`, which reports it in one line."""
    if not callable(fn):
        raise GraderInputError(f"expected a function, got {type(fn).__name__} {fn!r:.60}")
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted from None
    if out is None or out is Ellipsis:
        raise NotAttempted
    return out


def as_tensor(value: Any, shape: tuple[int, ...], name: str = "your function's result") -> torch.Tensor:
    """``value`` as a float64 tensor of ``shape`` (a number for shape ()), or a :class:`GraderInputError` saying
    what was wrong with it."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value.double()
    except (TypeError, ValueError, RuntimeError):
        raise GraderInputError(f"{name} should be a tensor of shape {shape}, got {type(value).__name__}") from None
    if tuple(t.shape) != tuple(shape):
        raise GraderInputError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise GraderInputError(f"{name} has non-finite entries (NaN or inf)")
    return t


def verdict(exercise: str, body: Callable[[], Iterable[CheckResult]]) -> Grade:
    """Run ``body`` (which calls the reader's function through :func:`call` and returns the checks it made) and
    turn the outcome into a :class:`Grade`: the first failed check, with its numbers, is the 'not yet' reason."""
    try:
        results = list(body())
    except NotAttempted:
        return Grade(exercise, "not attempted")
    except GraderInputError as e:
        return Grade(exercise, "not yet", str(e))
    except Exception as e:  # the reader's code raised: report it in one line, not a traceback
        return Grade(exercise, "not yet", f"your function raised {type(e).__name__}: {e}")
    if not results:
        raise RuntimeError(f"the grader of {exercise!r} made no check")  # a grader that cannot fail is a bug
    for r in results:
        if not r.passed:
            return Grade(exercise, "not yet", str(r))
    return Grade(exercise, "correct", f"{len(results)} check{'s' if len(results) != 1 else ''} passed")


# ---------------------------------------------------------------------------------------------
# The graders, by chapter (each: grade_<what it grades>(fn) -> Grade; docstring names the equation)
# ---------------------------------------------------------------------------------------------
_ = (math, np, checks)  # used by the graders below


# --- 04_posterior ------------------------------------------------------------------------------------
__all__ += ["grade_mu_tilde"]


def grade_mu_tilde(mu_tilde: Callable[..., Any]) -> Grade:
    """Exercise: the posterior mean mu_tilde_t(x_t, x_0) = c_1 x_0 + c_2 x_t (Ho et al., Eq. 7).

    The reader's ``mu_tilde(alpha_bar_prev, alpha_bar_t, beta_t, x0, xt)`` is compared with
    ``diffusion.q_posterior`` on the paper's schedule at t = 1, 2, 500 and 1000 and random x_0, x_t. Tolerance:
    64 ulps of float64 of the terms |c_1 x_0| + |c_2 x_t|, divided by 1 - alpha_bar_t, because a reader who writes
    1 - alpha_bar_t as a subtraction loses that many digits to cancellation (at t = 1 it is beta_1 = 1e-4)."""
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)

    def body() -> list[CheckResult]:
        out = []
        for t in (1, 2, 500, 1000):
            x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
            xt = torch.randn(5, 3, generator=g, dtype=torch.float64)
            mine = as_tensor(call(mu_tilde, sched.alpha_bars[t - 1].item(), sched.alpha_bars[t].item(),
                                  sched.betas[t].item(), x0, xt), (5, 3), "mu_tilde(...)")
            ref, _ = q_posterior(sched, x0, xt, t)
            c1, c2 = sched.posterior_mean_coef1[t], sched.posterior_mean_coef2[t]
            tol = 64 * torch.finfo(torch.float64).eps * (c1 * x0.abs() + c2 * xt.abs()) / sched.one_minus_alpha_bars[t]
            out.append(checks.bound_check(mine, ref, tol, "64 ulps of the terms / (1 - alpha_bar_t)",
                                          name=f"mu_tilde at t = {t}"))
        return out
    return verdict("Exercise (posterior mean)", body)
