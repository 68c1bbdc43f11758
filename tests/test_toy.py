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
