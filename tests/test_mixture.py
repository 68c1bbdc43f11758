"""GaussianMixture: density, score, sampling, the diffused marginal and the optimal denoiser."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_lab.checks import (bayes_on_grid, bound_check, exact_check, grid_moments, ks_check, mc_mean_check,
                             mc_variance_check)
from ddpm_lab.diffusion import q_sample
from ddpm_lab.gaussians import GaussianMixture, log_normal
from ddpm_lab.schedules import NoiseSchedule

SCHED = NoiseSchedule.linear()
GM = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
                     torch.tensor([[[0.1, 0.03], [0.03, 0.2]], [[0.3, -0.1], [-0.1, 0.15]]]))
X = torch.tensor([[0.2, 0.1], [-1.3, 0.7], [2.0, -1.0]], dtype=torch.float64)


def test_log_prob_equals_scipy():
    ref = np.log(sum(w * stats.multivariate_normal(m, c).pdf(X.numpy())
                     for w, m, c in zip(GM.weights.numpy(), GM.means.numpy(), GM.covs.numpy())))
    exact_check(GM.log_prob(X), ref, ulps=1e3).assert_ok()


def test_score_equals_autograd_of_log_prob():
    x = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(GM.log_prob(x).sum(), x)
    exact_check(GM.score(X), auto, ulps=1e3, name="score").assert_ok()


def test_diagonal_covariances_are_accepted():
    var = torch.tensor([0.2, 0.3], dtype=torch.float64)
    gm = GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.5, -0.5]]), var[None])
    exact_check(gm.log_prob(X), log_normal(X, gm.means[0], torch.log(var)).sum(-1)).assert_ok()


def test_samples_have_the_mixture_moments():
    x = GM.sample(40_000, torch.Generator().manual_seed(0))
    mean = (GM.weights[:, None] * GM.means).sum(0)
    second = (GM.weights[:, None, None] * (GM.covs + GM.means[:, :, None] * GM.means[:, None, :])).sum(0)
    var = torch.diagonal(second) - mean**2
    mc_mean_check(x, mean).assert_ok()
    mc_variance_check(x, var).assert_ok()


def test_diffused_marginal_matches_q_sample_of_samples():
    g = torch.Generator().manual_seed(1)
    t = 150
    xt = q_sample(SCHED, GM.sample(20_000, g), t, generator=g)
    qt = GM.diffused(SCHED, t)
    for i in range(2):  # the 1-D marginal of a mixture is a mixture of the 1-D marginals
        cdf = lambda u, i=i: sum(w * stats.norm(m[i], math.sqrt(c[i, i])).cdf(u)  # noqa: E731
                                 for w, m, c in zip(qt.weights.tolist(), qt.means.numpy(), qt.covs.numpy()))
        ks_check(xt[:, i], cdf, name=f"coordinate {i}").assert_ok()


def test_posterior_mean_equals_tweedie_with_autograd_score():
    """E[x0 | x_t] = (x_t + (1 - alpha_bar) grad log q(x_t)) / sqrt(alpha_bar): two independent routes."""
    for t in [1, 11, 301, 1000]:
        xt = X.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(GM.diffused(SCHED, t).log_prob(xt).sum(), xt)
        ab, omab = SCHED.alpha_bars[t].item(), SCHED.one_minus_alpha_bars[t].item()
        tweedie = (X + omab * score) / math.sqrt(ab)
        exact_check(GM.posterior_mean_x0(SCHED, X, t), tweedie, ulps=1e6, name=f"t={t}").assert_ok()
        exact_check(GM.eps_star(SCHED, X, t), -math.sqrt(omab) * score, ulps=1e6).assert_ok()


def test_posterior_mean_equals_bayes_on_a_grid_in_1d():
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.05], [0.2]]))
    t, xt = 200, 0.3
    ab, omab = SCHED.alpha_bars[t].item(), SCHED.one_minus_alpha_bars[t].item()
    grid = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    post = bayes_on_grid(gm.log_prob(grid[:, None]), log_normal(xt, math.sqrt(ab) * grid, math.log(omab)), grid)
    m = grid_moments(grid, post)
    est = gm.posterior_mean_x0(SCHED, torch.tensor([[xt]]), t).item()
    bound_check(m.mean, est, m.mean_err, "trapezoid bound", rounding_floor=8001 * 2.2e-16).assert_ok()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 1), torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"covs\[1\] is not symmetric positive definite"):
        GaussianMixture(torch.tensor([0.5, 0.5]), torch.zeros(2, 2), torch.stack([torch.eye(2), -torch.eye(2)]))
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="x must end in dimension d=2"):
        GM.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match=r"t must be a single timestep in \[0, 1000\], got 1001"):
        GM.diffused(SCHED, 1001)
    with pytest.raises(ValueError, match=r"t must be a single timestep in \[1, 1000\], got 0"):
        GM.eps_star(SCHED, X, 0)
    with pytest.raises(ValueError, match=r"t must be a single timestep in \[1, 1000\], got 0"):
        GM.posterior_mean_x0(SCHED, X, 0)
    q0 = GM.diffused(SCHED, 0)  # t = 0: the data distribution itself
    exact_check(q0.log_prob(X), GM.log_prob(X)).assert_ok()
