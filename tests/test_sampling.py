"""Reverse step, ancestral sampling (Algorithm 2) and DDIM, against the exact denoiser of a Gaussian mixture."""

import math

import numpy as np
import pytest
import torch

from ddpm_lab import diffusion as D
from ddpm_lab.checks import chi2_check, exact_check, mc_mean_check
from ddpm_lab.gaussians import GaussianMixture
from ddpm_lab.schedules import NoiseSchedule

SCHED = NoiseSchedule.linear(T=200, beta_1=1e-4 * 5, beta_T=0.02 * 5)  # 200 steps, same total noise scale
GM = GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]),
                     torch.full((3, 2), 0.15**2))


def exact_eps(xt, t):
    return GM.eps_star(SCHED, xt, int(t[0]))


def component_mass_check(x):
    """Assign each sample to its nearest mixture mean: counts vs weights (chi-square)."""
    labels = torch.cdist(x, GM.means).argmin(1)
    return chi2_check(torch.bincount(labels, minlength=3), GM.weights, name="component masses")


def test_ancestral_sampling_with_the_exact_denoiser_reproduces_the_data():
    x = D.sample_ancestral(SCHED, exact_eps, (4000, 2), generator=torch.Generator().manual_seed(0))
    component_mass_check(x).assert_ok()
    mc_mean_check(x, (GM.weights[:, None] * GM.means).sum(0), name="mean").assert_ok()


def test_sampling_with_a_wrong_eps_coefficient_fails_the_check():
    """Algorithm 2 with 1 - alpha_t over sqrt(1 - alpha_bar_t) replaced by its square root: a common slip."""
    def wrong_step(xt, t):
        eps = exact_eps(xt, torch.full((xt.shape[0],), t))
        b, a, omab = SCHED.betas[t].item(), SCHED.alphas[t].item(), SCHED.one_minus_alpha_bars[t].item()
        return (xt - math.sqrt(b) / math.sqrt(omab) * eps) / math.sqrt(a)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    for t in range(SCHED.T, 0, -1):  # t = T, ..., 1 as in Algorithm 2 (no noise at t = 1)
        x = wrong_step(x, t) + (math.sqrt(SCHED.betas[t].item()) * torch.randn(x.shape, generator=g, dtype=x.dtype)
                                if t > 1 else 0)
    assert not mc_mean_check(x, (GM.weights[:, None] * GM.means).sum(0)).passed


def test_record_returns_the_whole_trajectory():
    x, traj = D.sample_ancestral(SCHED, exact_eps, (8, 2), generator=torch.Generator().manual_seed(1), record=True)
    assert len(traj) == SCHED.T + 1 and torch.equal(traj[-1], x)


def test_ddim_eta_one_has_the_ddpm_posterior_variance():
    sig = torch.tensor([D.ddim_sigma(SCHED, t, t - 1, 1.0) ** 2 for t in range(1, SCHED.T + 1)], dtype=torch.float64)
    exact_check(sig, SCHED.beta_tildes[1:], name="sigma^2(eta=1) = beta_tilde").assert_ok()
    assert D.ddim_sigma(SCHED, 1, 0, 1.0) == 0.0  # the last step, to x_0: beta_tilde_1 = 0
    assert D.ddim_sigma(SCHED, 10, 9, 0.0) == 0.0


def test_ddim_eta0_is_deterministic_and_invertible_with_the_exact_denoiser():
    g = torch.Generator().manual_seed(2)
    taus = D.ddim_timesteps(SCHED.T, SCHED.T)
    x_T = torch.randn(256, 2, generator=g, dtype=torch.float64)
    a = D.sample_ddim(SCHED, exact_eps, x_T, taus, eta=0.0)
    b = D.sample_ddim(SCHED, exact_eps, x_T, taus, eta=0.0)
    assert torch.equal(a, b)
    x0 = GM.sample(256, g)
    back = D.sample_ddim(SCHED, exact_eps, D.ddim_invert(SCHED, exact_eps, x0, taus), taus)
    err = (back - x0).norm(dim=1)
    # first-order discretization: the round-trip error shrinks with the step count
    coarse = D.ddim_timesteps(SCHED.T, 20)
    back20 = D.sample_ddim(SCHED, exact_eps, D.ddim_invert(SCHED, exact_eps, x0, coarse), coarse)
    assert err.median() < (back20 - x0).norm(dim=1).median() / 4
    assert err.median() < 0.05


def test_ddim_timesteps():
    assert D.ddim_timesteps(1000, 5) == [1, 251, 501, 750, 1000]
    assert D.ddim_timesteps(10, 10) == list(range(1, 11))
    assert D.ddim_timesteps(10, 1) == [10]
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 10\], got 0"):
        D.ddim_timesteps(10, 0)
    with pytest.raises(ValueError, match="t_prev"):
        D.ddim_step(SCHED, torch.zeros(1, 2), torch.zeros(1, 2), 5, 5)
    with pytest.raises(ValueError, match=r"need integers 0 <= t_prev < t <= 200, got t=5, t_prev=-1"):
        D.ddim_step(SCHED, torch.zeros(1, 2), torch.zeros(1, 2), 5, -1)
    assert D.ddim_sigma(SCHED, torch.tensor(10), np.int64(9), 1.0) == D.ddim_sigma(SCHED, 10, 9, 1.0)
    with pytest.raises(ValueError, match=r"t and t_prev must be integers, got t=10.0"):
        D.ddim_sigma(SCHED, 10.0, 9, 1.0)
    with pytest.raises(ValueError, match=r"got t=201, t_prev=0"):
        D.ddim_sigma(SCHED, 201, 0, 1.0)
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty increasing list in \[1, 200\]"):
        D.sample_ddim(SCHED, exact_eps, torch.zeros(1, 2, dtype=torch.float64), [0, 100, 200])
    with pytest.raises(ValueError, match=r"t must be in \[1, 200\], got 0"):
        D.p_sample_step(SCHED, exact_eps, torch.zeros(1, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="variance must be"):
        D.p_mean_variance(SCHED, torch.zeros(1, 2), torch.zeros(1, 2), 3, variance="learned")


def test_clipping_x0_is_a_no_op_when_nothing_needs_clipping_and_bounds_otherwise():
    xt = torch.full((4, 2), 0.3, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    small = lambda x, t: torch.zeros_like(x)  # noqa: E731  (x0_pred = x_t / sqrt(alpha_bar): inside [-1, 1])
    a = D.p_sample_step(SCHED, small, xt, 5, generator=g1)
    b = D.p_sample_step(SCHED, small, xt, 5, generator=g2, clip_x0=True)
    exact_check(a, b, ulps=1e3, name="clip is a no-op inside [-1, 1]").assert_ok()
    huge = lambda x, t: torch.full_like(x, -50.0)  # noqa: E731  (x0_pred far outside the data range)
    x0 = D.ddim_step(SCHED, huge(xt, None), xt, 10, 0, clip_x0=True)
    assert x0.abs().max() <= 1.0 + 1e-12


def test_algorithm_2_runs_t_from_T_down_to_1_and_adds_no_noise_at_t1():
    seen = []

    def spy(xt, t):
        seen.append(int(t[0]))
        return torch.zeros_like(xt)
    D.sample_ancestral(SCHED, spy, (3, 2), generator=torch.Generator().manual_seed(0))
    assert seen == list(range(SCHED.T, 0, -1))
    xt = torch.full((3, 2), 0.5, dtype=torch.float64)
    out = D.p_sample_step(SCHED, spy, xt, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, xt / math.sqrt(SCHED.alphas[1].item()))  # the mean, eps = 0, and no noise at t = 1
    seen.clear()
    D.sample_ddim(SCHED, spy, xt, [1, 50, 200])
    assert seen == [200, 50, 1]


def test_sampling_from_t_equal_T_is_sample_ancestral():
    """sample_ancestral_from at t = T with the same x_T and generator state draws the same noise: the same x_0."""
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = D.sample_ancestral(SCHED, exact_eps, (64, 2), generator=torch.Generator().manual_seed(4), x_T=x_T)
    b = D.sample_ancestral_from(SCHED, exact_eps, x_T, SCHED.T, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    c = D.sample_ancestral(SCHED, exact_eps, (64, 2), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    d = D.sample_ancestral_from(SCHED, exact_eps, torch.randn(64, 2, generator=g, dtype=torch.float64), SCHED.T,
                                generator=g)
    assert torch.equal(c, d)


@pytest.mark.parametrize("t", [0, -1, SCHED.T + 1, 2.5, True])
def test_sampling_from_a_t_out_of_range_is_refused(t):
    with pytest.raises(ValueError, match=rf"t must be .*\[1, {SCHED.T}\], got {t!r}"):
        D.sample_ancestral_from(SCHED, exact_eps, torch.zeros(4, 2, dtype=torch.float64), t)


def test_sampling_from_checks_its_input():
    with pytest.raises(ValueError, match="x_t must be finite"):
        D.sample_ancestral_from(SCHED, exact_eps, torch.tensor([[0.0, math.nan]], dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="x_t must be a floating-point tensor"):
        D.sample_ancestral_from(SCHED, exact_eps, torch.zeros(4, 2, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="variance must be"):
        D.sample_ancestral_from(SCHED, exact_eps, torch.zeros(4, 2, dtype=torch.float64), 5, variance="bogus")


def test_sampling_from_an_intermediate_t_decodes_a_stochastic_encoding():
    """Ho et al. Sec. 4.4: encode with q(x_t | x_0) at t = T/2, decode with Algorithm 2 from t: finite x_0 of the right
    shape, every step recorded."""
    g = torch.Generator().manual_seed(6)
    t = SCHED.T // 2
    x_t = D.q_sample(SCHED, GM.sample(32, g), t, generator=g)
    x0, traj = D.sample_ancestral_from(SCHED, exact_eps, x_t, t, generator=g, record=True)
    assert x0.shape == (32, 2) and torch.isfinite(x0).all()
    assert len(traj) == t + 1 and torch.equal(traj[0], x_t) and torch.equal(traj[-1], x0)
