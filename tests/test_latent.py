"""The linear-Gaussian latent model: exact evidence, posterior and ELBO against independent routes."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_lab.checks import bayes_on_grid, bound_check, exact_check, grid_moments, mc_mean_check
from ddpm_lab.latent import (LinearGaussian, elbo, elbo_grad_reparam, elbo_grad_score, elbo_samples,
                             gaussian_kl_full)

MODEL = LinearGaussian.random(d=3, k=2, sigma=0.5, seed=0)
X = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)


def test_log_prob_equals_scipy_and_monte_carlo_integral_over_z():
    ref = stats.multivariate_normal(MODEL.b.numpy(), MODEL.marginal_cov().numpy()).logpdf(X.numpy())
    exact_check(MODEL.log_prob(X), ref, ulps=1e3).assert_ok()
    # p(x) = E_{p(z)}[p(x | z)], estimated by Monte Carlo in the probability (not log) domain
    z = torch.randn(200_000, MODEL.k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lik = torch.exp(MODEL.log_likelihood(X, z))
    mc_mean_check(lik, math.exp(ref), name="p(x) = E_p(z)[p(x|z)]").assert_ok()


def test_posterior_equals_bayes_rule_on_a_grid():
    model = LinearGaussian(torch.tensor([[1.5], [-0.7]]), torch.tensor([0.2, 0.1]), 0.8)  # k = 1: a 1-D grid
    x = torch.tensor([1.0, -0.4], dtype=torch.float64)
    grid = torch.linspace(-6, 6, 6001, dtype=torch.float64)
    density = bayes_on_grid(model.log_prior(grid[:, None]), model.log_likelihood(x, grid[:, None]), grid)
    m = grid_moments(grid, density)
    mean, cov = model.posterior(x)
    floor = 6001 * np.finfo(np.float64).eps
    bound_check(m.mean, mean.item(), m.mean_err, "trapezoid bound", "mean", rounding_floor=floor).assert_ok()
    bound_check(m.var, cov.item(), m.var_err, "trapezoid bound", "variance", rounding_floor=floor).assert_ok()


def test_elbo_identity_gap_equals_kl_to_posterior_and_is_zero_at_it():
    g = torch.Generator().manual_seed(2)
    log_px = MODEL.log_prob(X)
    post_mean, post_cov = MODEL.posterior(X)
    for _ in range(5):
        m = torch.randn(2, generator=g, dtype=torch.float64)
        logvar = torch.randn(2, generator=g, dtype=torch.float64)
        e = elbo(MODEL, X, m, logvar)
        assert e <= log_px
        kl = gaussian_kl_full(m, torch.diag(torch.exp(logvar)), post_mean, post_cov)
        exact_check(log_px - e, kl, ulps=1e3, name="log p - ELBO = KL(q || posterior)").assert_ok()


def test_elbo_is_tight_at_the_posterior_when_q_can_represent_it():
    # with a diagonal q the posterior must be diagonal too: use orthogonal columns of W
    model = LinearGaussian(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.zeros(3), 0.5)
    mean, cov = model.posterior(X)
    assert torch.count_nonzero(cov - torch.diag(torch.diagonal(cov))) == 0
    exact_check(elbo(model, X, mean, torch.log(torch.diagonal(cov))), model.log_prob(X), ulps=1e3).assert_ok()


def test_monte_carlo_elbo_is_unbiased():
    m, logvar = torch.tensor([0.2, -0.5], dtype=torch.float64), torch.tensor([-1.0, 0.3], dtype=torch.float64)
    samples = elbo_samples(MODEL, X, m, logvar, 50_000, torch.Generator().manual_seed(3))
    mc_mean_check(samples, elbo(MODEL, X, m, logvar).item(), name="MC ELBO").assert_ok()


def test_gradient_estimators_are_unbiased_for_the_autograd_gradient_of_the_closed_form():
    m = torch.tensor([0.2, -0.5], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([-1.0, 0.3], dtype=torch.float64, requires_grad=True)
    exact = torch.cat(torch.autograd.grad(elbo(MODEL, X, m, logvar), (m, logvar)))
    # finite differences of the closed form: an independent route to the same gradient
    h = 1e-6
    params = torch.cat([m, logvar]).detach()
    fd = torch.stack([(elbo(MODEL, X, *(params + h * e).split(2)) - elbo(MODEL, X, *(params - h * e).split(2))) / (2 * h)
                      for e in torch.eye(4, dtype=torch.float64)])
    # central differences: error h^2 |f'''| / 6 (O(|W|^2) here) plus rounding eps |f| / h
    f0 = abs(elbo(MODEL, X, m, logvar).item())
    tol = h**2 * (MODEL.W**2).sum().item() + 10 * np.finfo(np.float64).eps * f0 / h
    bound_check(fd, exact, tol, "central-difference error", "finite differences").assert_ok()
    g = torch.Generator().manual_seed(4)
    rep = elbo_grad_reparam(MODEL, X, m.detach(), logvar.detach(), 50_000, g)
    sf = elbo_grad_score(MODEL, X, m.detach(), logvar.detach(), 50_000, g)
    mc_mean_check(rep, exact, name="reparameterization gradient").assert_ok()
    mc_mean_check(sf, exact, name="score-function gradient").assert_ok()
    assert (sf.var(0) > 2 * rep.var(0)).all(), "REINFORCE should have much larger variance here"


def test_gaussian_kl_full_matches_diagonal_normal_kl_and_zero():
    from ddpm_lab.gaussians import normal_kl

    m1, m2 = torch.tensor([0.1, 0.4], dtype=torch.float64), torch.tensor([-0.3, 0.0], dtype=torch.float64)
    v1, v2 = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([1.5, 0.7], dtype=torch.float64)
    full = gaussian_kl_full(m1, torch.diag(v1), m2, torch.diag(v2))
    exact_check(full, normal_kl(m1, v1.log(), m2, v2.log()).sum(), ulps=1e3).assert_ok()
    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    assert abs(gaussian_kl_full(m1, S, m1, S).item()) < 1e-14


def test_bad_input_raises():
    with pytest.raises(ValueError, match="W must be a"):
        LinearGaussian(torch.ones(3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\)"):
        LinearGaussian(torch.ones(3, 2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="sigma must be positive and finite, got 0.0"):
        LinearGaussian(torch.ones(3, 2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="x must end in dimension d=3"):
        MODEL.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        elbo(MODEL, X, torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="z must end in dimension k=2"):
        MODEL.log_prior(torch.zeros(5, 3))


def test_shape_errors_are_value_errors():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        elbo_grad_reparam(MODEL, X, torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="one Gaussian per call"):
        gaussian_kl_full(torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2), torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
