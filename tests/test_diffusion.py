"""Forward process, posterior and conversions, each against an independent route.

Two tests run the same check on a deliberately wrong formula and assert that it fails: a check that
passes for a wrong formula would prove nothing.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_lab import diffusion as D
from ddpm_lab.checks import bayes_on_grid, bound_check, exact_check, grid_moments, ks_check, mc_mean_check, mc_variance_check
from ddpm_lab.gaussians import log_normal
from ddpm_lab.schedules import NoiseSchedule

SCHED = NoiseSchedule.linear()
N = 20_000


def simulate_chain(x0: float, t: int, n: int = N, seed: int = 0) -> torch.Tensor:
    """x_t by applying the one-step kernel (Eq. 2) t times, at steps s = 1..t."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n,), x0, dtype=torch.float64)
    for s in range(1, t + 1):
        x = D.q_step(SCHED, x, s, generator=g)
    return x


def closed_form_checks(x: torch.Tensor, mean: float, var: float) -> list:
    return [
        mc_mean_check(x, mean, std=math.sqrt(var), name="mean"),
        mc_variance_check(x, var, name="variance"),
        ks_check(x, stats.norm(mean, math.sqrt(var)).cdf, name="KS"),
    ]


@pytest.mark.parametrize("t", [10, 100, 1000])
def test_chain_matches_closed_form_q_xt_given_x0_eq4(t):
    x0 = 0.7
    x = simulate_chain(x0, t)
    mean, var = D.q_mean_variance(SCHED, torch.tensor([x0], dtype=torch.float64), t)
    for result in closed_form_checks(x, mean.item(), var.item()):
        result.assert_ok()


def test_chain_check_fails_for_closed_form_missing_square_root():
    """Wrong Eq. 4 (mean alpha_bar x0 instead of sqrt(alpha_bar) x0): the same check must fail."""
    t, x0 = 100, 0.7
    x = simulate_chain(x0, t)
    ab = SCHED.alpha_bars[t].item()
    results = closed_form_checks(x, ab * x0, 1 - ab)
    assert not results[0].passed and not results[2].passed


def test_q_sample_matches_closed_form_moments():
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((N,), -0.4, dtype=torch.float64)
    xt = D.q_sample(SCHED, x0, 300, generator=g)
    ab = SCHED.alpha_bars[300].item()
    mc_mean_check(xt, math.sqrt(ab) * -0.4, std=math.sqrt(1 - ab)).assert_ok()
    mc_variance_check(xt, 1 - ab).assert_ok()


def test_two_kernels_compose_into_one_with_alpha_product():
    """q(x_t | x_{t-2}) = N(sqrt(a_t a_{t-1}) x, 1 - a_t a_{t-1}): algebra and Monte Carlo."""
    a = SCHED.alphas[1:]  # alpha_1..alpha_T
    two_step_var = a[1:] * (1 - a[:-1]) + (1 - a[1:])
    exact_check(two_step_var, 1 - a[1:] * a[:-1], name="variance").assert_ok()
    a = SCHED.alphas
    g = torch.Generator().manual_seed(2)
    x = torch.full((N,), 1.0, dtype=torch.float64)
    x = D.q_step(SCHED, D.q_step(SCHED, x, 500, generator=g), 501, generator=g)
    prod = (a[500] * a[501]).item()
    mc_mean_check(x, math.sqrt(prod), std=math.sqrt(1 - prod)).assert_ok()
    mc_variance_check(x, 1 - prod).assert_ok()


def grid_posterior_check(t: int, x0: float, xt: float, beta_tilde: float, mu_tilde: float) -> list:
    """Bayes on a grid: q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), vs a claimed N(mu, var)."""
    ab_prev, alpha, beta = (SCHED.alpha_bars[t - 1].item(), SCHED.alphas[t].item(), SCHED.betas[t].item())
    width = min(math.sqrt(1 - ab_prev), math.sqrt(beta / alpha))
    lo = min(math.sqrt(ab_prev) * x0, xt / math.sqrt(alpha)) - 12 * width
    hi = max(math.sqrt(ab_prev) * x0, xt / math.sqrt(alpha)) + 12 * width
    grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    log_prior = log_normal(grid, math.sqrt(ab_prev) * x0, math.log(1 - ab_prev))
    log_lik = log_normal(xt, math.sqrt(alpha) * grid, math.log(beta))
    m = grid_moments(grid, bayes_on_grid(log_prior, log_lik, grid))
    floor = 64 * np.finfo(np.float64).eps  # float64 rounding of the grid sums
    return [
        bound_check(m.mean, mu_tilde, m.mean_err + floor * max(1, abs(mu_tilde)), "trapezoid bound", "mean"),
        bound_check(m.var, beta_tilde, m.var_err + floor, "trapezoid bound", "variance"),
    ]


@pytest.mark.parametrize("t", [2, 11, 101, 1000])
def test_posterior_eqs_6_7_equal_bayes_on_a_grid(t):
    x0, xt = 0.8, -0.3
    mean, var = D.q_posterior(SCHED, torch.tensor([x0], dtype=torch.float64), torch.tensor([xt], dtype=torch.float64), t)
    for r in grid_posterior_check(t, x0, xt, var.item(), mean.item()):
        r.assert_ok()


def test_posterior_check_fails_for_swapped_alpha_bars():
    """Wrong Eq. 7 (alpha_bar_t and alpha_bar_{t-1} swapped): the grid check must fail."""
    t, x0, xt = 11, 0.8, -0.3
    ab, abp, b = SCHED.alpha_bars[t].item(), SCHED.alpha_bars[t - 1].item(), SCHED.betas[t].item()
    wrong_var = (1 - ab) / (1 - abp) * b
    mean, _ = D.q_posterior(SCHED, torch.tensor([x0], dtype=torch.float64), torch.tensor([xt], dtype=torch.float64), t)
    results = grid_posterior_check(t, x0, xt, wrong_var, mean.item())
    assert results[0].passed and not results[1].passed


def test_mu_tilde_eps_form_eq10_equals_eq7():
    g = torch.Generator().manual_seed(3)
    t = torch.arange(2, SCHED.T + 1)
    xt = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 3, generator=g, dtype=torch.float64)
    x0 = D.predict_x0_from_eps(SCHED, xt, eps, t)
    mean, _ = D.q_posterior(SCHED, x0, xt, t)
    exact_check(mean, D.mu_tilde_from_eps(SCHED, xt, eps, t), name="mu_tilde").assert_ok()


def test_x0_eps_conversions_round_trip():
    g = torch.Generator().manual_seed(4)
    t = torch.randint(1, SCHED.T + 1, (64,), generator=g)
    x0 = torch.randn(64, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, 4, 4, generator=g, dtype=torch.float64)
    xt = D.q_sample(SCHED, x0, t, eps=eps)
    exact_check(D.predict_eps_from_x0(SCHED, xt, x0, t), eps, ulps=1e4).assert_ok()  # 1/sqrt(1-ab) amplifies
    exact_check(D.predict_x0_from_eps(SCHED, xt, eps, t), x0, ulps=1e6).assert_ok()
    exact_check(D.eps_from_score(SCHED, D.score_from_eps(SCHED, eps, t), t), eps).assert_ok()


def test_score_from_eps_equals_autograd_score_of_q_xt_given_x0():
    g = torch.Generator().manual_seed(5)
    t = torch.randint(1, SCHED.T + 1, (32,), generator=g)
    x0 = torch.randn(32, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 3, generator=g, dtype=torch.float64)
    xt = D.q_sample(SCHED, x0, t, eps=eps).requires_grad_(True)
    mean, var = D.q_mean_variance(SCHED, x0, t)
    log_q = log_normal(xt, mean, torch.log(var)).sum()
    (autograd_score,) = torch.autograd.grad(log_q, xt)
    exact_check(D.score_from_eps(SCHED, eps, t), autograd_score, ulps=1e6, name="score").assert_ok()


def test_float32_in_float32_out_and_shapes():
    x0 = torch.randn(5, 3, 8, 8)
    t = torch.tensor([1, 2, 3, 501, 1000])
    xt = D.q_sample(SCHED, x0, t)
    assert xt.dtype == torch.float32 and xt.shape == x0.shape
    mean, var = D.q_posterior(SCHED, x0, xt, t)
    assert mean.dtype == torch.float32 and mean.shape == x0.shape and var.shape == (5, 1, 1, 1)
    assert torch.equal(mean[0], x0[0]) or torch.allclose(mean[0], x0[0], atol=1e-6)  # t = 1: point mass at x0
    assert var[0].item() == 0.0


def test_q_step_with_given_noise_is_deterministic():
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    eps = torch.linspace(2, -2, 7, dtype=torch.float64)
    beta = 1e-4 + (0.02 - 1e-4) * 9 / 999  # beta_10 from the linear formula of Sec. 4
    expected = math.sqrt(1 - beta) * x + math.sqrt(beta) * eps
    assert torch.allclose(D.q_step(SCHED, x, 10, eps=eps), expected, rtol=0, atol=1e-15)


def test_bad_inputs_raise_value_error_naming_the_problem():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\], got 1001"):
        D.q_sample(SCHED, x, 1001)
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\], got 0"):
        D.q_step(SCHED, x, torch.tensor([1, 2, 0, 3]))
    with pytest.raises(ValueError, match=r"eps has shape \(4, 2\) but x has shape \(4, 3\)"):
        D.q_sample(SCHED, x, 3, eps=torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x0 and xt must have the same shape"):
        D.q_posterior(SCHED, x, torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="t has 2 timesteps but the batch has 4"):
        D.q_sample(SCHED, x, torch.tensor([1, 2]))


def test_v_and_mean_parameterizations_round_trip():
    g = torch.Generator().manual_seed(6)
    t = torch.randint(2, SCHED.T + 1, (64,), generator=g)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    xt = D.q_sample(SCHED, x0, t, eps=eps)
    v = D.v_from_x0_eps(SCHED, x0, eps, t)
    exact_check(D.x0_from_v(SCHED, xt, v, t), x0, ulps=1e3, name="x0 from v").assert_ok()
    exact_check(D.eps_from_v(SCHED, xt, v, t), eps, ulps=1e3, name="eps from v").assert_ok()
    mu, _ = D.q_posterior(SCHED, x0, xt, t)
    exact_check(D.eps_from_mu(SCHED, xt, mu, t), eps, ulps=1e6, name="eps from mu").assert_ok()
    exact_check(D.x0_from_mu(SCHED, xt, mu, t), x0, ulps=1e8, name="x0 from mu").assert_ok()
    score = D.score_from_eps(SCHED, eps, t)
    exact_check(D.mu_from_score(SCHED, xt, score, t), mu, ulps=1e3, name="mu from score").assert_ok()
    exact_check(D.mu_from_v(SCHED, xt, v, t), mu, ulps=1e3, name="mu from v").assert_ok()
    # v is a rotation: |x_t|^2 + |v|^2 = |x0|^2 + |eps|^2
    exact_check((xt**2 + v**2), (x0**2 + eps**2), ulps=1e3, name="rotation").assert_ok()


# --- the paper's t at the boundaries: 0, 1, T, T + 1 ---------------------------------------------------------
def test_q_sample_at_t0_returns_x0_and_at_T_is_almost_pure_noise():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert torch.equal(D.q_sample(SCHED, x0, 0, eps=eps), x0)
    mean, var = D.q_mean_variance(SCHED, x0, 0)
    assert torch.equal(mean, x0) and var.item() == 0.0
    xT = D.q_sample(SCHED, x0, SCHED.T, eps=eps)
    ab_T = math.prod(1 - (1e-4 + (0.02 - 1e-4) * k / 999) for k in range(1000))  # independent product
    assert torch.allclose(xT, math.sqrt(ab_T) * x0 + math.sqrt(1 - ab_T) * eps, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\], got 1001"):
        D.q_sample(SCHED, x0, SCHED.T + 1)


def test_first_step_of_the_chain_is_q_sample_at_t1():
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    eps = torch.linspace(1, -1, 5, dtype=torch.float64)
    assert torch.allclose(D.q_step(SCHED, x, 1, eps=eps), D.q_sample(SCHED, x, 1, eps=eps), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\], got 1001"):
        D.q_step(SCHED, x, 1001)


@pytest.mark.parametrize("fn", ["q_posterior", "mu_tilde_from_eps", "predict_x0_from_eps", "predict_eps_from_x0",
                                "x0_from_v", "eps_from_v", "x0_from_mu", "eps_from_mu", "mu_from_score", "mu_from_v",
                                "v_from_x0_eps"])
@pytest.mark.parametrize("t", [0, 1001])
def test_reverse_quantities_need_t_in_1_to_T(fn, t):
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"t must be in \[1, 1000\], got {t}"):
        getattr(D, fn)(SCHED, x, x, t)


def test_posterior_at_t1_is_a_point_mass_and_at_T_is_finite():
    x0 = torch.tensor([[0.3, -0.6]], dtype=torch.float64)
    xt = torch.tensor([[1.2, 0.4]], dtype=torch.float64)
    mean, var = D.q_posterior(SCHED, x0, xt, 1)
    assert torch.equal(mean, x0) and var.item() == 0.0
    mean, var = D.q_posterior(SCHED, x0, xt, SCHED.T)
    ab, abp, b = SCHED.alpha_bars[1000].item(), SCHED.alpha_bars[999].item(), SCHED.betas[1000].item()
    assert var.item() == pytest.approx((1 - abp) / (1 - ab) * b, rel=1e-12)
