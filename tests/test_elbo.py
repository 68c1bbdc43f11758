"""The variational bound: terms, the decomposition against a direct Monte Carlo estimate, unbiased estimators."""

import math

import pytest
import torch

from ddpm_lab import diffusion as D
from ddpm_lab.checks import exact_check, mc_mean_check
from ddpm_lab.elbo import (bits_per_dim, decoder_nll, kl_term, prior_term, term_at, vlb_importance, vlb_single_t,
                           vlb_terms)
from ddpm_lab.gaussians import log_normal, normal_kl
from ddpm_lab.schedules import NoiseSchedule

SCHED = NoiseSchedule.linear(T=6, beta_1=0.05, beta_T=0.4)  # short chain: the direct estimate stays cheap


def imperfect_model(xt, t):
    """A fixed, deliberately imperfect reverse model: mean 0.9 x_t, variance beta_t (Ho et al.'s sigma_t^2)."""
    logvar = torch.log(SCHED.betas[t]).reshape(-1, *([1] * (xt.ndim - 1)))
    return 0.9 * xt, logvar.expand_as(xt)


def direct_vlb(x0, n, generator):
    """E_q[log q(x_1:T | x_0) - log p(x_0:T)] by simulating the chain (Eqs. 1-3), no decomposition used."""
    x0 = x0.expand(n, *x0.shape[1:])
    xs, log_q = [x0], torch.zeros(n, dtype=torch.float64)
    for t in range(1, SCHED.T + 1):  # x_t ~ q(x_t | x_{t-1}), t = 1..T
        x_next = D.q_step(SCHED, xs[-1], t, generator=generator)
        log_q += log_normal(x_next, math.sqrt(1 - SCHED.betas[t].item()) * xs[-1], math.log(SCHED.betas[t])).sum(1)
        xs.append(x_next)
    log_p = log_normal(xs[-1], 0.0, 0.0).sum(1)
    for t in range(1, SCHED.T + 1):  # p_theta(x_{t-1} | x_t), the step from xs[t] to xs[t - 1]
        mean, logvar = imperfect_model(xs[t], torch.full((n,), t))
        log_p += log_normal(xs[t - 1], mean, logvar).sum(1)
    return log_q - log_p


def test_decomposition_eq5_equals_direct_monte_carlo():
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[0.6, -0.3]], dtype=torch.float64)
    n = 40_000
    terms = vlb_terms(SCHED, imperfect_model, x0.expand(n, 2), g)
    direct = direct_vlb(x0, n, g)
    mc_mean_check(direct, terms.sum(1).mean().item(), name="direct vs Eq. 5", std=direct.std()).assert_ok()
    assert terms.shape == (n, SCHED.T + 1)


def test_decomposition_check_fails_with_an_index_off_by_one():
    """Shifting the model's timestep by one (a classic slip) must be caught by the same comparison."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[0.6, -0.3]], dtype=torch.float64)
    n = 40_000
    shifted = lambda xt, t: imperfect_model(xt, (t + 1).clamp(max=SCHED.T))  # noqa: E731
    terms = vlb_terms(SCHED, shifted, x0.expand(n, 2), g)
    direct = direct_vlb(x0, n, g)
    assert not mc_mean_check(direct, terms.sum(1).mean().item(), std=direct.std()).passed


def test_kl_term_is_zero_for_the_true_posterior_and_matches_normal_kl():
    x0 = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    xt = torch.tensor([[0.1, 0.4]], dtype=torch.float64)
    t = torch.tensor([3])
    mu, var = D.q_posterior(SCHED, x0, xt, t)
    assert abs(kl_term(SCHED, x0, xt, t, mu, torch.log(var)).item()) < 1e-15
    expected = normal_kl(mu, torch.log(var).expand_as(mu), 0.2, -1.0).sum()
    exact_check(kl_term(SCHED, x0, xt, t, torch.full_like(x0, 0.2), torch.tensor(-1.0)), expected).assert_ok()
    for bad in (1, 0, SCHED.T + 1):  # L_{t-1} is a KL for t = 2..T only; t = 1 is the decoder L_0
        with pytest.raises(ValueError, match=rf"t must be in \[2, {SCHED.T}\], got {bad}"):
            kl_term(SCHED, x0, xt, torch.tensor([bad]), mu, torch.log(var))


def test_prior_and_decoder_terms():
    x0 = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    ab = SCHED.alpha_bars[-1].item()
    one = 0.5 * (-math.log(1 - ab) - ab)
    exact_check(prior_term(SCHED, x0), 3 * one + 0.5 * ab * 2.0).assert_ok()
    exact_check(decoder_nll(x0, torch.zeros_like(x0), torch.tensor(0.0)), 1.5 * math.log(2 * math.pi) + 1.0).assert_ok()


def test_single_t_and_importance_estimators_are_unbiased():
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([[0.6, -0.3]], dtype=torch.float64)
    n = 60_000
    full = vlb_terms(SCHED, imperfect_model, x0.expand(20_000, 2), g).sum(1)
    single = vlb_single_t(SCHED, imperfect_model, x0.expand(n, 2), g)
    probs = torch.cat([torch.zeros(1, dtype=torch.float64), torch.linspace(1, 3, SCHED.T, dtype=torch.float64)])
    imp = vlb_importance(SCHED, imperfect_model, x0.expand(n, 2), probs / probs.sum(), g)
    target = full.mean().item()
    se_full = full.std().item() / math.sqrt(full.numel())
    for est in (single, imp):
        se = math.hypot(est.std().item() / math.sqrt(n), se_full)  # both sides are estimates
        mc_mean_check(est, target, std=se * math.sqrt(n)).assert_ok()
    assert single.var() > full.var()  # one term times T is noisier than the sum


def test_term_at_accepts_scalar_t_and_validates():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    assert term_at(SCHED, imperfect_model, x0, 2).shape == (4,)
    for bad in (0, 7):
        with pytest.raises(ValueError, match=rf"t must be in \[1, 6\], got {bad}"):
            term_at(SCHED, imperfect_model, x0, bad)
    with pytest.raises(ValueError, match=r"probs must have length T \+ 1 = 7"):
        vlb_importance(SCHED, imperfect_model, x0, torch.ones(6) / 6)
    with pytest.raises(ValueError, match=r"probs\[0\] = 0.*got probs\[0\] = 0.125"):
        vlb_importance(SCHED, imperfect_model, x0, torch.tensor([1, 1, 1, 1, 1, 1, 2]) / 8)
    with pytest.raises(ValueError, match=r"min over t >= 1 = 0.0"):
        vlb_importance(SCHED, imperfect_model, x0, torch.tensor([0, 0, 1, 1, 1, 1, 1]) / 5)


def test_bits_per_dim():
    assert bits_per_dim(math.log(2) * 3072 * 8, 3072).item() == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)


def test_discrete_decoder_column_equals_the_discretized_log_likelihood():
    from ddpm_lab.gaussians import discretized_log_normal

    x0 = (torch.tensor([[0, 255], [128, 7]], dtype=torch.float64) / 127.5) - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    terms = vlb_terms(SCHED, imperfect_model, x0, g1, decoder="discrete")
    x1 = D.q_sample(SCHED, x0, 1, generator=g2)
    mean, logvar = imperfect_model(x1, torch.ones(2, dtype=torch.long))
    exact_check(terms[:, 0], -discretized_log_normal(x0, mean, logvar).sum(1)).assert_ok()
    with pytest.raises(ValueError, match="decoder must be"):
        term_at(SCHED, imperfect_model, x0, 1, decoder="logistic")


def test_single_t_estimate_is_unbiased_given_t():
    """E[single | t] = T E[L_{t-1}] + L_T for every t: a check with power that the pooled mean lacks."""
    from ddpm_lab.checks import bound_check

    g = torch.Generator().manual_seed(5)
    x0 = torch.tensor([[0.6, -0.3]], dtype=torch.float64)
    n = 30_000
    per_term = vlb_terms(SCHED, imperfect_model, x0.expand(n, 2), g)
    est, t = vlb_single_t(SCHED, imperfect_model, x0.expand(n, 2), g, return_t=True)
    assert int(t.min()) == 1 and int(t.max()) == SCHED.T  # the paper's t ~ Uniform{1..T}
    means = torch.stack([est[t == k].mean() for k in range(1, SCHED.T + 1)])
    se = torch.stack([est[t == k].std() / math.sqrt(int((t == k).sum())) for k in range(1, SCHED.T + 1)])
    expected = SCHED.T * per_term[:, :-1].mean(0) + per_term[:, -1].mean()
    se_exp = SCHED.T * per_term[:, :-1].std(0) / math.sqrt(n)
    bound_check(means, expected, 5 * torch.sqrt(se**2 + se_exp**2), "5 SE per t").assert_ok()
    forgot_t = (est - per_term[:, -1].mean()) / SCHED.T + per_term[:, -1].mean()  # the slip: no factor T
    wrong = torch.stack([forgot_t[t == k].mean() for k in range(1, SCHED.T + 1)])
    assert not bound_check(wrong, expected, 5 * torch.sqrt(se**2 + se_exp**2), "5 SE per t").passed


def test_vlb_columns_are_L0_to_LT_in_the_papers_numbering():
    """Column 0 is the decoder at t = 1, column j the KL made at t = j + 1, column T the prior: checked against
    term_at at the paper's t with the same noise."""
    x0 = torch.tensor([[0.6, -0.3], [0.1, 0.2]], dtype=torch.float64)
    terms = vlb_terms(SCHED, imperfect_model, x0, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    for t in range(1, SCHED.T + 1):  # vlb_terms draws x_t for t = 1..T in this order
        col = term_at(SCHED, imperfect_model, x0, torch.full((2,), t), g)
        assert torch.equal(terms[:, t - 1], col), t
    exact_check(terms[:, 0], decoder_nll(x0, *imperfect_model(D.q_sample(
        SCHED, x0, 1, generator=torch.Generator().manual_seed(9)), torch.ones(2, dtype=torch.long)))).assert_ok()
    assert torch.equal(terms[:, SCHED.T], prior_term(SCHED, x0))
