"""Toy data, the MLP denoiser and Algorithm 1: determinism, learning, and bad input."""

import math

import pytest
import torch

from ddpm_lab.checks import mc_mean_check, mc_variance_check
from ddpm_lab.schedules import NoiseSchedule
from ddpm_lab.toy import (MLPDenoiser, TrainConfig, eps_model_of, mixture, model_mean_logvar, sinusoidal_embedding,
                          spiral, train, two_moons)

SCHED = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)


def test_datasets_shapes_and_scale():
    g = torch.Generator().manual_seed(0)
    for x in (two_moons(2000, g), spiral(2000, g), mixture().sample(2000, g)):
        assert x.shape == (2000, 2) and x.dtype == torch.float64
        assert x.abs().max() < 2.0
    gm = mixture(k=4, radius=1.0, std=0.1)
    mc_mean_check(gm.sample(20_000, g), torch.zeros(2)).assert_ok()
    mc_variance_check(gm.sample(20_000, g), torch.full((2,), 0.5 + 0.01)).assert_ok()  # cos^2 averages to 1/2


def test_sinusoidal_embedding():
    e = sinusoidal_embedding(torch.tensor([0, 5, 999]), 16)
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.ones(8)) and torch.allclose(e[0, 8:], torch.zeros(8))
    assert torch.allclose(e.pow(2).view(3, 2, 8).sum(1), torch.ones(3, 8))  # cos^2 + sin^2 = 1
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.tensor([1]), 7)


def test_training_is_deterministic_and_learns():
    data = lambda n, g: mixture().sample(n, g)  # noqa: E731
    runs = []
    for _ in range(2):
        net = MLPDenoiser(hidden=32, layers=2)
        cfg = train(net, data, SCHED, TrainConfig(steps=150, batch=128, progress=False, seed=3))
        runs.append((net, cfg.losses))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()))
    losses = runs[0][1]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)  # eps-MSE starts near d = 2 and falls


def test_mean_parameterization_and_vlb_objective_run():
    data = lambda n, g: two_moons(n, g)  # noqa: E731
    net = MLPDenoiser(hidden=16, layers=2)
    cfg = train(net, data, SCHED, TrainConfig(steps=5, batch=32, parameterization="mu", objective="vlb",
                                              variance="beta_tilde", progress=False))
    assert len(cfg.losses) == 5 and all(math.isfinite(v) for v in cfg.losses)
    xt = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([1, 2, 50, 100])
    mean, logvar = model_mean_logvar(SCHED, net, xt, t, "mu", "beta_tilde")
    assert mean.shape == logvar.shape == (4, 2) and torch.isfinite(logvar).all()
    assert logvar[0, 0].item() == pytest.approx(math.log(SCHED.beta_tildes[2].item()))  # clipped at t = 1
    with pytest.raises(ValueError, match=r"t must be in \[1, 100\], got 0"):
        model_mean_logvar(SCHED, net, xt, torch.tensor([0, 1, 2, 3]), "eps", "beta")
    assert eps_model_of(SCHED, net, "mu")(xt, t).shape == (4, 2)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="unknown parameterization"):
        train(MLPDenoiser(), lambda n, g: two_moons(n, g), SCHED, TrainConfig(steps=1, parameterization="x0"))
    with pytest.raises(ValueError, match="k >= 1"):
        mixture(k=0)


def test_algorithm_1_draws_the_papers_t_uniformly_from_1_to_T():
    class Spy(MLPDenoiser):
        def forward(self, xt, t):
            seen.append(t.clone())
            return super().forward(xt, t)
    seen: list = []
    train(Spy(hidden=8, layers=1), lambda n, g: two_moons(n, g), SCHED,
          TrainConfig(steps=40, batch=256, progress=False, seed=1))
    t = torch.cat(seen)
    assert int(t.min()) == 1 and int(t.max()) == SCHED.T  # 10,240 draws: each of 100 values ~100 times
    assert torch.bincount(t, minlength=SCHED.T + 1)[0] == 0


def _paper(T=100, beta_1=1e-3, beta_T=0.2):
    """beta_t, alpha_bar_t and beta_tilde_t (t = 0..T) from the paper's formulas in plain floats."""
    beta = [math.nan] + [beta_1 + (beta_T - beta_1) * (k - 1) / (T - 1) for k in range(1, T + 1)]
    abar = [1.0]
    for k in range(1, T + 1):
        abar.append(abar[-1] * (1 - beta[k]))
    bt = [math.nan, math.nan] + [(1 - abar[k - 1]) / (1 - abar[k]) * beta[k] for k in range(2, T + 1)]
    return beta, abar, bt


@pytest.mark.parametrize("par", ["eps", "mu"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_model_mean_logvar_is_eq_11_and_the_stated_variance(par, variance):
    beta, abar, bt = _paper()
    net = MLPDenoiser(hidden=16, layers=2, seed=4)
    xt = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (1, 2, 37, 100):
        tt = torch.full((6,), t)
        with torch.no_grad():
            out = net(xt, tt)
        mean, logvar = model_mean_logvar(SCHED, net, xt, tt, par, variance)
        want = (xt - beta[t] / math.sqrt(1 - abar[t]) * out) / math.sqrt(1 - beta[t]) if par == "eps" else out
        assert torch.allclose(mean, want, rtol=1e-12, atol=1e-12), (t, par)
        var = beta[t] if variance == "beta" else bt[max(t, 2)]  # beta_tilde_1 = 0 is clipped to beta_tilde_2
        assert torch.allclose(logvar, torch.full_like(xt, math.log(var)), rtol=1e-12, atol=0), (t, variance)


def test_eps_model_of_inverts_eq_11_for_a_mean_predictor_and_passes_an_eps_predictor_through():
    beta, abar, _ = _paper()
    net = MLPDenoiser(hidden=16, layers=2, seed=5)
    xt = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (1, 50, 100):
        tt = torch.full((5,), t)
        with torch.no_grad():
            out = net(xt, tt)
        want = (xt - math.sqrt(1 - beta[t]) * out) * math.sqrt(1 - abar[t]) / beta[t]
        assert torch.allclose(eps_model_of(SCHED, net, "mu")(xt, tt), want, rtol=1e-10, atol=1e-10)
        assert torch.equal(eps_model_of(SCHED, net, "eps")(xt, tt), out)


@pytest.mark.parametrize("par", ["eps", "mu"])
def test_the_training_target_is_eps_or_the_posterior_mean(par):
    """L_simple's target (Algorithm 1): the drawn eps, or for a mean-predictor mu_tilde(x_t, x_0) of Eq. 7."""
    from ddpm_lab.toy import _loss

    beta, abar, _ = _paper()
    net = MLPDenoiser(hidden=16, layers=2, seed=6)
    x0 = two_moons(64, torch.Generator().manual_seed(2))
    cfg = TrainConfig(parameterization=par, progress=False)
    got = _loss(SCHED, net, x0, cfg, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order: t, then eps
    t = torch.randint(1, SCHED.T + 1, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    a = torch.tensor([abar[k] for k in t.tolist()], dtype=torch.float64)[:, None]
    b = torch.tensor([beta[k] for k in t.tolist()], dtype=torch.float64)[:, None]
    ap = torch.tensor([abar[k - 1] for k in t.tolist()], dtype=torch.float64)[:, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    mu_tilde = ap.sqrt() * b / (1 - a) * x0 + (1 - b).sqrt() * (1 - ap) / (1 - a) * xt  # Eq. 7
    target = eps if par == "eps" else mu_tilde
    with torch.no_grad():
        want = ((net(xt, t) - target) ** 2).sum(1).mean()
    assert torch.allclose(got.detach(), want, rtol=1e-10), (got, want)


# ---------------------------------------------------------------------------------------------
# Learned variance (Nichol & Dhariwal's log-space interpolation between beta_tilde_t and beta_t)
# ---------------------------------------------------------------------------------------------
def _learned_net(seed=7):
    return MLPDenoiser(hidden=16, layers=2, seed=seed, learned_variance=True)


def test_learned_variance_shapes_and_range():
    net = _learned_net()
    xt = 3 * torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (1, 2, 50, 100):
        tt = torch.full((50,), t)
        assert net(xt, tt).shape == (50, 4)  # mean head and variance head
        mean, logvar = model_mean_logvar(SCHED, net, xt, tt, "eps", "learned")
        assert mean.shape == logvar.shape == (50, 2)
        lo = SCHED.posterior_log_variance_clipped[t].item()
        hi = math.log(SCHED.betas[t].item())
        assert (logvar >= lo - 1e-12).all() and (logvar <= hi + 1e-12).all(), t
        assert eps_model_of(SCHED, net)(xt, tt).shape == (50, 2)
        m_fixed, lv_fixed = model_mean_logvar(SCHED, net, xt, tt, "eps", "beta")  # the mean head, fixed variance
        assert torch.equal(m_fixed, mean) and torch.allclose(lv_fixed, torch.full_like(xt, hi))


def test_learned_log_variance_is_the_interpolation_written_out():
    """log sigma^2 = v log beta_t + (1 - v) log beta_tilde_t, v = sigmoid(raw), beta_tilde_1 clipped to beta_tilde_2."""
    beta, abar, bt = _paper()
    net = _learned_net(seed=8)
    xt = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for t in (1, 2, 37, 100):
        tt = torch.full((6,), t)
        with torch.no_grad():
            out = net(xt, tt)
        mean, logvar = model_mean_logvar(SCHED, net, xt, tt, "eps", "learned")
        v = 1 / (1 + torch.exp(-out[:, 2:]))
        want = v * math.log(beta[t]) + (1 - v) * math.log(bt[max(t, 2)])
        assert torch.allclose(logvar, want, rtol=1e-12, atol=1e-12), t
        want_mean = (xt - beta[t] / math.sqrt(1 - abar[t]) * out[:, :2]) / math.sqrt(1 - beta[t])
        assert torch.allclose(mean, want_mean, rtol=1e-12, atol=1e-12), t


def test_learned_variance_bad_input_raises():
    with pytest.raises(ValueError, match=r"variance 'learned'.*objective 'vlb'.*got objective 'simple'"):
        TrainConfig(variance="learned", objective="simple")
    with pytest.raises(ValueError, match="variance head"):
        model_mean_logvar(SCHED, MLPDenoiser(hidden=8, layers=1), torch.zeros(2, 2, dtype=torch.float64),
                          torch.tensor([1, 2]), "eps", "learned")
    with pytest.raises(ValueError, match="variance head"):  # training a net without the head on "learned"
        train(MLPDenoiser(hidden=8, layers=1), lambda n, g: two_moons(n, g), SCHED,
              TrainConfig(steps=1, batch=8, objective="vlb", variance="learned", progress=False))
    with pytest.raises(ValueError, match="unknown variance"):
        TrainConfig(variance="fixed")


def test_vlb_trained_learned_variance_has_a_finite_bound_and_samples():
    from ddpm_lab.elbo import vlb_terms
    from ddpm_lab.toy import sample_learned

    data = lambda n, g: mixture().sample(n, g)  # noqa: E731
    net = _learned_net()
    cfg = train(net, data, SCHED, TrainConfig(steps=40, batch=128, objective="vlb", variance="learned",
                                              progress=False, seed=2))
    assert all(math.isfinite(v) for v in cfg.losses)
    x0 = mixture().sample(200, torch.Generator().manual_seed(4))
    with torch.no_grad():
        L = vlb_terms(SCHED, lambda xt, t: model_mean_logvar(SCHED, net, xt, t, "eps", "learned"), x0,
                      torch.Generator().manual_seed(5)).sum(1)
    assert torch.isfinite(L).all()
    xs = sample_learned(SCHED, net, (300, 2), generator=torch.Generator().manual_seed(6))
    assert xs.shape == (300, 2) and torch.isfinite(xs).all()


def test_sample_learned_with_a_fixed_variance_is_algorithm_2():
    """With sigma_t^2 = beta_t or beta_tilde_t the loop is sample_ancestral's, on the same random numbers."""
    from ddpm_lab.diffusion import sample_ancestral
    from ddpm_lab.toy import sample_learned

    net = _learned_net(seed=9)
    for v in ("beta", "beta_tilde"):
        a = sample_learned(SCHED, net, (64, 2), variance=v, generator=torch.Generator().manual_seed(1))
        b = sample_ancestral(SCHED, eps_model_of(SCHED, net), (64, 2), v, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), v
