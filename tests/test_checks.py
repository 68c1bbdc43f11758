"""The checks themselves: each passes on a true statement and fails on a false one."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_lab.checks import (bayes_on_grid, bound_check, chi2_check, exact_check, grid_moments, ks_check, mc_mean_check,
                             mc_variance_check, ols, trapezoid)


def normal_samples(n=20_000, mean=1.0, sd=2.0, seed=0):
    return np.random.default_rng(seed).normal(mean, sd, n)


def test_mc_mean_check_tolerance_is_k_standard_errors():
    x = normal_samples()
    r = mc_mean_check(x, 1.0, std=2.0)
    assert r.passed and r.tolerance == pytest.approx(5 * 2.0 / math.sqrt(len(x)))
    assert not mc_mean_check(x, 1.0 + 10 * 2.0 / math.sqrt(len(x)), std=2.0).passed
    with pytest.raises(AssertionError, match="mean: .* FAILED"):
        mc_mean_check(x, 1.2).assert_ok()


def test_mc_mean_check_reports_worst_component():
    x = np.stack([normal_samples(seed=1), normal_samples(seed=2)], axis=1)
    r = mc_mean_check(x, np.array([1.0, 1.5]))
    assert not r.passed and r.expected == 1.5


def test_mc_variance_check():
    x = normal_samples()
    assert mc_variance_check(x, 4.0).passed
    assert not mc_variance_check(x, 4.4).passed  # 10% off is ~10 SE at n = 20000


def test_ks_check_detects_wrong_distribution():
    x = normal_samples(5000)
    assert ks_check(x, stats.norm(1.0, 2.0).cdf).passed
    assert not ks_check(x, stats.norm(1.0, 2.4).cdf).passed
    assert not ks_check(x, stats.laplace(1.0, 2.0 / math.sqrt(2)).cdf).passed  # same mean and variance


def test_exact_check_scales_with_magnitude_and_dtype():
    assert exact_check(1e6, 1e6 * (1 + 1e-15)).passed
    assert not exact_check(1.0, 1.0 + 1e-10).passed
    assert exact_check(1.0, 1.0 + 1e-6, dtype=torch.float32).passed


def test_bound_check():
    assert bound_check([1.0, 2.0], [1.05, 2.0], 0.1, "given").passed
    assert not bound_check([1.0, 2.0], [1.05, 2.5], 0.1, "given").passed
    r = bound_check(1.0, 1.0 + 1e-15, 1e-3, "given", rounding_floor=1e-14)
    assert r.passed and "equal to rounding" in str(r)
    r = bound_check(1.0, 1.0 + 1e-6, 1e-3, "given", rounding_floor=1e-14)
    assert r.passed and "|gap| 1.0e-06" in str(r)
    assert not bound_check(1.0, 1.0 + 1e-12, 0.0, "given", rounding_floor=1e-14).passed


def test_trapezoid_error_estimate_covers_the_true_error():
    x = np.linspace(0, math.pi, 101)
    value, err = trapezoid(x, np.sin(x))
    assert abs(value - 2.0) <= err
    assert err < 1e-3


def test_grid_moments_of_a_gaussian_and_bayes_on_grid():
    grid = np.linspace(-10, 10, 2001)
    dens = bayes_on_grid(stats.norm(0, 1).logpdf(grid), stats.norm(grid, 1).logpdf(1.0), grid)
    m = grid_moments(grid, dens)  # conjugate: N(0.5, 0.5)
    assert abs(m.mean - 0.5) <= m.mean_err + 1e-12 and abs(m.var - 0.5) <= m.var_err + 1e-12
    assert not abs(m.var - 0.6) <= m.var_err


def test_ols_recovers_coefficients_within_standard_errors():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 2))
    y = X @ np.array([0.7, -1.2]) + rng.normal(0, 0.5, 5000)
    fit = ols(X, y)
    assert np.all(np.abs(fit.coef - [0.7, -1.2]) <= 5 * fit.coef_se)
    assert abs(fit.resid_var - 0.25) <= 5 * fit.resid_var_se
    assert not np.all(np.abs(fit.coef - [0.8, -1.2]) <= 5 * fit.coef_se)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mc_mean_check([1.0], 0.0)
    with pytest.raises(ValueError, match="uniform"):
        trapezoid([0.0, 1.0, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        ols(np.ones((3, 2)), np.ones(4))


def test_printed_line_hides_rounding_level_gaps_only():
    ok = exact_check(1.0, 1.0 + 2e-16)
    assert str(ok) == "identity: equal to rounding (64 ulps of float64) OK"
    bad = exact_check(1.0, 1.1)
    assert "|gap| 1.0e-01 >" in str(bad) and "FAILED" in str(bad)
    mc = mc_mean_check(normal_samples(), 1.0, std=2.0)
    assert "|gap| " in str(mc) and "|gap| <=" not in str(mc)


def test_chi2_check_accepts_true_and_rejects_wrong_bin_probabilities():
    rng = np.random.default_rng(5)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    counts = np.bincount(rng.choice(4, size=20_000, p=p), minlength=4)
    assert chi2_check(counts, p).passed
    assert not chi2_check(counts, [0.12, 0.18, 0.3, 0.4]).passed
    tiny = chi2_check(np.append(counts, [0, 1]), np.append(p * (1 - 1e-5), [0.5e-5, 0.5e-5]))
    assert "5 dof" not in tiny.how  # the two near-empty bins were pooled
    with pytest.raises(ValueError, match="sum to 1"):
        chi2_check([1, 2], [0.5, 0.6])


def test_at_least_check_is_one_sided():
    from ddpm_lab.checks import at_least_check

    assert at_least_check(5.0, 1.0, 0.1, "given").passed  # far above: fine, unlike a two-sided check
    assert at_least_check(0.95, 1.0, 0.1, "given").passed  # below, but within the slack
    bad = at_least_check([2.0, 0.5], [1.0, 1.0], 0.1, "given", name="bound")
    assert not bad.passed and "0.5 >= 1" in str(bad) and "FAILED" in str(bad)
    with pytest.raises(AssertionError, match="bound"):
        bad.assert_ok()
