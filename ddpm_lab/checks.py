"""Reusable numerical checks: two independent routes to one number, with a tolerance that is derived
(from the sample size, the grid spacing or the floating-point precision), never typed in.

Each check returns a :class:`CheckResult`; ``.assert_ok()`` raises ``AssertionError`` with the whole
comparison in the message when it fails, and ``print(result)`` gives one rounded, deterministic line
for a notebook.

Monte Carlo checks use k standard errors (default k = 5: a correct formula fails with probability
about 6e-7 per comparison; seeds then make the outcome deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats

__all__ = [
    "CheckResult",
    "mc_mean_check",
    "mc_variance_check",
    "ks_check",
    "chi2_check",
    "exact_check",
    "bound_check",
    "at_least_check",
    "trapezoid",
    "bayes_on_grid",
    "grid_moments",
    "GridMoments",
    "ols",
    "OLSFit",
]

ArrayLike = torch.Tensor | np.ndarray | float


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class CheckResult:
    """One comparison: ``estimate`` vs ``expected`` (worst component), allowed gap ``tolerance``."""

    name: str
    estimate: float
    expected: float
    tolerance: float
    passed: bool
    how: str  # where the tolerance comes from, e.g. "5 SE, n=20000"
    # A gap at rounding level (an exact identity that holds) depends on the CPU's math library in
    # its last bits; such a passing check prints only "<= tol" so that stored outputs are portable.
    rounding_level: bool = False

    @property
    def gap(self) -> float:
        return abs(self.estimate - self.expected)

    def __str__(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        if self.rounding_level and self.passed:
            # Which component is worst, and by how much, is rounding noise: print neither.
            return f"{self.name}: equal to rounding ({self.how}) OK"
        return (
            f"{self.name}: {self.estimate:.4g} vs {self.expected:.4g} "
            f"(|gap| {self.gap:.1e} {'<=' if self.passed else '>'} tol {self.tolerance:.1e}, {self.how}) {verdict}"
        )

    def assert_ok(self) -> "CheckResult":
        """Raise ``AssertionError`` with the comparison if the check failed; return self otherwise."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _worst(name: str, estimate: np.ndarray, expected: np.ndarray, tol: np.ndarray, how: str,
           rounding_level: bool = False) -> CheckResult:
    estimate, expected, tol = np.broadcast_arrays(estimate, expected, tol)
    if estimate.size == 0:
        raise ValueError(f"{name}: nothing to compare (empty arrays, shape {estimate.shape})")
    ratio = np.abs(estimate - expected) / np.where(tol > 0, tol, np.finfo(np.float64).tiny)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.ndim else ()
    passed = bool(np.all(np.abs(estimate - expected) <= tol))
    return CheckResult(name, float(estimate[i]), float(expected[i]), float(tol[i]), passed, how, rounding_level)


def mc_mean_check(
    samples: ArrayLike, expected: ArrayLike, k: float = 5.0, std: ArrayLike | None = None, name: str = "mean"
) -> CheckResult:
    """Sample mean of ``samples`` (draws along axis 0) vs ``expected``, within k standard errors.

    The standard error is std / sqrt(n), with ``std`` the known (closed-form) standard deviation if
    given, else the sample standard deviation. Several components are compared at once; the result
    reports the worst one.
    """
    x = _np(samples)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    sd = x.std(axis=0, ddof=1) if std is None else _np(std)
    se = sd / math.sqrt(n)
    return _worst(name, x.mean(axis=0), _np(expected), k * se, f"{k:g} SE, n={n}")


def mc_variance_check(samples: ArrayLike, expected: ArrayLike, k: float = 5.0, name: str = "variance") -> CheckResult:
    """Unbiased sample variance vs ``expected``, within k standard errors.

    The standard error of the sample variance is sqrt((m4 - s^4) / n), with m4 the sample fourth
    central moment: no Gaussian assumption (for a Gaussian it is s^2 sqrt(2 / n)).
    """
    x = _np(samples)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 samples, got {n}")
    centered = x - x.mean(axis=0)
    var = x.var(axis=0, ddof=1)
    m4 = (centered**4).mean(axis=0)
    se = np.sqrt(np.maximum(m4 - var**2, 0.0) / n)
    return _worst(name, var, _np(expected), k * se, f"{k:g} SE, n={n}")


def ks_check(
    samples: ArrayLike, cdf: Callable[[np.ndarray], np.ndarray] | str, alpha: float = 1e-3, name: str = "KS"
) -> CheckResult:
    """One-sample Kolmogorov-Smirnov test of 1-D ``samples`` against ``cdf``.

    Passes when the KS distance D is at most the critical value D_crit(n, alpha) of the exact KS
    distribution (equivalently p >= alpha); D_crit shrinks like 1.36 / sqrt(n) at alpha = 0.05.
    """
    x = _np(samples).ravel()
    n = x.size
    if n < 1:
        raise ValueError("KS test needs at least 1 sample, got 0")
    result = stats.kstest(x, cdf, method="exact" if n <= 10_000 else "asymp")
    d_crit = float(stats.kstwo.ppf(1.0 - alpha, n))
    return CheckResult(name, float(result.statistic), 0.0, d_crit, bool(result.statistic <= d_crit),
                       f"KS critical value at alpha={alpha:g}, n={n}")


def chi2_check(counts: ArrayLike, probs: ArrayLike, alpha: float = 1e-3, min_expected: float = 5.0,
               name: str = "chi-square") -> CheckResult:
    """Pearson chi-square goodness of fit of histogram ``counts`` to bin probabilities ``probs``.

    Bins whose expected count n p is below ``min_expected`` are pooled into one (the usual validity
    condition of the chi-square approximation). Passes when the statistic is at most the chi-square
    critical value at ``alpha`` with (bins - 1) degrees of freedom.
    """
    c, p = _np(counts).ravel(), _np(probs).ravel()
    if c.shape != p.shape:
        raise ValueError(f"counts and probs must have the same size, got {c.size} and {p.size}")
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"probs must be non-negative and sum to 1, got sum {p.sum():.6g}")
    n = c.sum()
    small = n * p < min_expected
    c = np.append(c[~small], c[small].sum())
    p = np.append(p[~small], p[small].sum())
    keep = p > 0
    c, p = c[keep], p[keep]
    stat = float(((c - n * p) ** 2 / (n * p)).sum())
    dof = c.size - 1
    crit = float(stats.chi2.ppf(1.0 - alpha, dof))
    return CheckResult(name, stat, 0.0, crit, stat <= crit,
                       f"chi2 critical value at alpha={alpha:g}, {dof} dof, n={int(n)}")


def exact_check(a: ArrayLike, b: ArrayLike, ulps: float = 64.0, name: str = "identity",
                dtype: torch.dtype = torch.float64) -> CheckResult:
    """An algebraic identity evaluated two ways: |a - b| <= ulps * eps(dtype) * max(1, |a|, |b|).

    ``ulps`` allows for the rounding of a few dozen floating-point operations.
    """
    a_, b_ = np.broadcast_arrays(_np(a), _np(b))
    scale = np.maximum(1.0, np.maximum(np.abs(a_), np.abs(b_)))
    eps = torch.finfo(dtype).eps
    return _worst(name, a_, b_, ulps * eps * scale, f"{ulps:g} ulps of {str(dtype).replace('torch.', '')}",
                  rounding_level=True)


def bound_check(estimate: ArrayLike, expected: ArrayLike, tolerance: ArrayLike, how: str,
                name: str = "value", rounding_floor: ArrayLike = 0.0) -> CheckResult:
    """|estimate - expected| <= tolerance + rounding_floor, for a tolerance derived elsewhere (a
    quadrature error bound, k OLS standard errors, ...); ``how`` says where it comes from.

    ``rounding_floor`` is the floating-point error of the computation itself; when every gap is
    within it the comparison is exact to rounding and prints as such.
    """
    est, exp_, floor = _np(estimate), _np(expected), _np(rounding_floor)
    at_rounding = bool(np.all(np.abs(est - exp_) <= floor))
    return _worst(name, est, exp_, _np(tolerance) + floor, how, rounding_level=at_rounding)


def at_least_check(value: ArrayLike, lower: ArrayLike, slack: ArrayLike, how: str,
                   name: str = "lower bound") -> CheckResult:
    """A one-sided check: value >= lower - slack (e.g. a variational bound against the true NLL, with slack
    from its standard error). Reports the worst component; prints as "value vs lower (margin ..., slack ...)"."""
    v, lo, sl = np.broadcast_arrays(_np(value), _np(lower), _np(slack))
    if v.size == 0:
        raise ValueError(f"{name}: nothing to compare (empty arrays, shape {v.shape})")
    margin = v - lo
    i = np.unravel_index(int(np.argmin(margin + sl)), margin.shape) if margin.ndim else ()
    passed = bool(np.all(margin >= -sl))
    return _OneSided(name, float(v[i]), float(lo[i]), float(sl[i]), passed, how)


@dataclass(frozen=True)
class _OneSided(CheckResult):
    """A :class:`CheckResult` for value >= expected - tolerance."""

    def __str__(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"{self.name}: {self.estimate:.4g} >= {self.expected:.4g} - slack "
                f"(margin {self.estimate - self.expected:.2e}, slack {self.tolerance:.1e}, {self.how}) {verdict}")


# ---------------------------------------------------------------------------------------------
# Bayes on a 1-D grid
# ---------------------------------------------------------------------------------------------
def trapezoid(grid: ArrayLike, values: ArrayLike) -> tuple[float, float]:
    """Trapezoid rule on a uniform grid, with an estimate of its error.

    The composite rule's error is sum_i h^3 f''(xi_i) / 12 over the intervals; with f'' estimated by
    second differences (h^2 f'' ~ f[i+1] - 2 f[i] + f[i-1]) its size is, to leading order in h, at
    most (h / 12) * sum_i |f[i+1] - 2 f[i] + f[i-1]|. Twice that is returned: a margin for the
    O(h^4) terms and the two end intervals that the leading-order estimate leaves out.
    """
    x, f = _np(grid), _np(values)
    if x.ndim != 1 or x.shape != f.shape or x.size < 3:
        raise ValueError(f"grid and values must be 1-D of equal length >= 3, got {x.shape} and {f.shape}")
    h = np.diff(x)
    if not np.allclose(h, h[0], rtol=1e-9, atol=0.0) or h[0] <= 0:
        raise ValueError("grid must be uniform and increasing")
    integral = float(h[0] * (f.sum() - 0.5 * (f[0] + f[-1])))
    second_diff = np.abs(f[2:] - 2 * f[1:-1] + f[:-2])
    return integral, float(2.0 * h[0] * second_diff.sum() / 12.0)


def bayes_on_grid(log_prior: ArrayLike, log_likelihood: ArrayLike, grid: ArrayLike) -> np.ndarray:
    """Posterior density on ``grid`` by Bayes' rule: p(z | x) = p(z) p(x | z) / integral of the same.

    Inputs are log-values on the grid; the normalization is done in log space (no underflow).
    """
    log_joint = _np(log_prior) + _np(log_likelihood)
    unnorm = np.exp(log_joint - log_joint.max())
    z, _ = trapezoid(grid, unnorm)
    return unnorm / z


@dataclass(frozen=True)
class GridMoments:
    """Mean and variance of a density on a grid, with trapezoid-rule error bounds."""

    mean: float
    var: float
    mean_err: float
    var_err: float


def grid_moments(grid: ArrayLike, density: ArrayLike) -> GridMoments:
    """Mean and variance of ``density`` tabulated on a uniform ``grid``, each with an error bound
    (the trapezoid bounds of the integrals involved, propagated to first order)."""
    x, p = _np(grid), _np(density)
    z, ez = trapezoid(x, p)
    m1, e1 = trapezoid(x, x * p)
    mean = m1 / z
    m2, e2 = trapezoid(x, (x - mean) ** 2 * p)
    var = m2 / z
    return GridMoments(mean, var, (e1 + abs(mean) * ez) / z, (e2 + var * ez) / z)


# ---------------------------------------------------------------------------------------------
# Least squares with standard errors
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OLSFit:
    """Ordinary least squares y ~ X coef: coefficients, their standard errors, the residual variance
    and its standard error (sqrt((m4 - s^4) / n) of the residuals)."""

    coef: np.ndarray
    coef_se: np.ndarray
    resid_var: float
    resid_var_se: float


def ols(X: ArrayLike, y: ArrayLike) -> OLSFit:
    """Fit y = X coef + noise by least squares; standard errors from s^2 (X^T X)^{-1}."""
    X_, y_ = _np(X), _np(y)
    if X_.ndim != 2 or y_.shape != (X_.shape[0],):
        raise ValueError(f"need X of shape (n, p) and y of shape (n,), got {X_.shape} and {y_.shape}")
    n, p = X_.shape
    if n <= p:
        raise ValueError(f"need more rows than columns to estimate the residual variance, got X of shape {X_.shape}")
    coef, *_ = np.linalg.lstsq(X_, y_, rcond=None)
    resid = y_ - X_ @ coef
    s2 = float(resid @ resid / (n - p))
    cov = s2 * np.linalg.inv(X_.T @ X_)
    m4 = float(np.mean((resid - resid.mean()) ** 4))
    return OLSFit(coef, np.sqrt(np.diag(cov)), s2, math.sqrt(max(m4 - s2**2, 0.0) / n))
