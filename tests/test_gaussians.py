"""log_normal and normal_kl against scipy, Monte Carlo and quadrature."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddpm_lab.checks import exact_check, mc_mean_check
from ddpm_lab.gaussians import log_normal, normal_kl


def test_log_normal_equals_scipy_logpdf():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    ours = log_normal(x, 0.3, math.log(2.5))
    exact_check(ours, stats.norm(0.3, math.sqrt(2.5)).logpdf(x.numpy()), ulps=16).assert_ok()


def test_normal_kl_equals_quadrature_and_monte_carlo():
    m1, v1, m2, v2 = 0.4, 0.3, -0.2, 1.7
    kl = normal_kl(m1, math.log(v1), m2, math.log(v2)).item()
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    quad, quad_err = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -np.inf, np.inf)
    assert abs(kl - quad) <= 10 * quad_err + 1e-12
    x = torch.from_numpy(np.random.default_rng(0).normal(m1, math.sqrt(v1), 50_000))
    log_ratio = log_normal(x, m1, math.log(v1)) - log_normal(x, m2, math.log(v2))
    mc_mean_check(log_ratio, kl, name="KL").assert_ok()


def test_normal_kl_is_zero_iff_equal_and_asymmetric():
    assert normal_kl(0.5, -1.0, 0.5, -1.0).item() == 0.0
    a = normal_kl(0.0, 0.0, 1.0, math.log(4.0)).item()
    b = normal_kl(1.0, math.log(4.0), 0.0, 0.0).item()
    assert a > 0 and b > 0 and abs(a - b) > 0.1


def test_wrong_kl_with_inverted_variance_ratio_fails_the_quadrature_check():
    m1, v1, m2, v2 = 0.4, 0.3, -0.2, 1.7
    wrong = 0.5 * (math.log(v2 / v1) + v2 / v1 + (m1 - m2) ** 2 / v2 - 1)  # ratio inverted
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    quad, quad_err = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -np.inf, np.inf)
    assert abs(wrong - quad) > 10 * quad_err + 1e-12


def test_extreme_log_variances_stay_finite():
    logvar = torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0], dtype=torch.float64)
    assert torch.isfinite(log_normal(torch.zeros(5, dtype=torch.float64), 0.0, logvar)).all()
    kl = normal_kl(0.0, logvar, 1e-3, logvar.flip(0) * 0 + logvar)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    kl32 = normal_kl(torch.zeros(3), torch.tensor([-30.0, 0.0, 30.0]), torch.zeros(3), torch.zeros(3))
    assert kl32.dtype == torch.float32 and torch.isfinite(kl32).all()


def test_broadcasting_and_dtype():
    out = log_normal(torch.zeros(4, 3), torch.zeros(3), torch.zeros(1))
    assert out.shape == (4, 3) and out.dtype == torch.float32
    assert log_normal(0.0, 0.0, 0.0).dtype == torch.float64
    mixed = normal_kl(torch.zeros(2), torch.zeros(2, dtype=torch.float64), 0.0, 0.0)
    assert mixed.dtype == torch.float64, "a float64 input must not be rounded to float32"
    assert log_normal(0.0, 0.0, 0.0).item() == pytest.approx(-0.5 * math.log(2 * math.pi))
