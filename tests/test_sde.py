"""ddpm_lab.sde against closed forms that do not use the code under test, and its ValueErrors."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lab import sde
from ddpm_lab.gaussians import GaussianMixture

F64 = torch.float64
S0 = 0.12  # a 1-D Gaussian data set N(0, S0^2): every marginal, score and flow is closed-form


def abar(t: float) -> float:
    return math.exp(-(0.1 * t + 0.5 * 19.9 * t * t))


def beta(t: float) -> float:
    return 0.1 + 19.9 * t


def v(t: float) -> float:
    """Var q(x_t) for N(0, S0^2) data under the VP SDE."""
    return abar(t) * S0**2 + 1 - abar(t)


def gauss_score(x: torch.Tensor, t: float) -> torch.Tensor:
    return -x / v(t)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Forward SDEs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_vp_drift_and_diffusion(t: float) -> None:
    x = torch.randn(5, 2, generator=gen(0), dtype=F64)
    torch.testing.assert_close(sde.vp_drift(x, t), -0.5 * beta(t) * x, rtol=1e-14, atol=0)
    assert sde.vp_diffusion(t).item() == pytest.approx(math.sqrt(beta(t)), rel=1e-14)
    assert sde.vp_diffusion(t, beta_min=1.0, beta_max=3.0).item() == pytest.approx(math.sqrt(1 + 2 * t), rel=1e-14)


def test_vp_marginal_matches_closed_form() -> None:
    data = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=F64),
                           torch.tensor([[0.04, 0.09], [0.01, 0.16]], dtype=F64))
    t = 0.4
    m = sde.vp_marginal(data, t)
    a2 = abar(t)
    torch.testing.assert_close(m.means, math.sqrt(a2) * data.means, rtol=1e-13, atol=0)
    torch.testing.assert_close(m.covs, a2 * data.covs + (1 - a2) * torch.eye(2, dtype=F64), rtol=1e-13, atol=1e-15)
    # log density at one point, by hand (diagonal covariances)
    x = torch.tensor([0.2, -0.5], dtype=F64)
    dens = 0.0
    for w, mu, var in zip([0.3, 0.7], [[1.0, 0.0], [-1.0, 2.0]], [[0.04, 0.09], [0.01, 0.16]]):
        c = [a2 * s + 1 - a2 for s in var]
        mm = [math.sqrt(a2) * u for u in mu]
        dens += w * math.prod(math.exp(-(xi - mi) ** 2 / (2 * ci)) / math.sqrt(2 * math.pi * ci)
                              for xi, mi, ci in zip(x.tolist(), mm, c))
    assert m.log_prob(x).item() == pytest.approx(math.log(dens), rel=1e-12)


def test_ve_sigma_and_diffusion() -> None:
    for t in (0.0, 0.25, 1.0):
        sig = 0.01 * 5000.0**t
        assert sde.ve_sigma(t).item() == pytest.approx(sig, rel=1e-12)
        # g^2 = d sigma^2 / dt = 2 sigma^2 log(sigma_max / sigma_min)
        assert sde.ve_diffusion(t).item() ** 2 == pytest.approx(2 * sig**2 * math.log(5000.0), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Fokker-Planck
# ---------------------------------------------------------------------------------------------
def heat_log_density(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, (1 + t) I): the heat equation's solution (f = 0, g = 1) from N(0, I)."""
    var = 1 + t
    d = x.shape[1]
    return -0.5 * d * torch.log(2 * math.pi * var) - (x**2).sum(1) / (2 * var)


def zero_drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def test_fp_residual_heat_equation() -> None:
    x = torch.randn(50, 3, generator=gen(1), dtype=F64)
    r = sde.fokker_planck_residual(heat_log_density, x, 0.4, zero_drift, lambda t: torch.ones((), dtype=F64))
    assert (r.residual.abs() <= 64 * torch.finfo(F64).eps * r.scale).all()
    # g^2 = 2 instead of 1: R = d / (2 v) - |x|^2 / (2 v^2), v = 1 + t (by hand)
    r2 = sde.fokker_planck_residual(heat_log_density, x, 0.4, zero_drift,
                                    lambda t: torch.full((), math.sqrt(2), dtype=F64))
    vv = 1.4
    torch.testing.assert_close(r2.residual, 3 / (2 * vv) - (x**2).sum(1) / (2 * vv**2), rtol=1e-12, atol=1e-12)


def test_fp_residual_vp_gaussian_and_finite_difference_order() -> None:
    def log_q(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = torch.exp(-(0.1 * t + 9.95 * t**2))
        var = ab * S0**2 + 1 - ab
        return -0.5 * torch.log(2 * math.pi * var) - x[:, 0] ** 2 / (2 * var)

    x = torch.linspace(-2, 2, 21, dtype=F64)[:, None]
    r = sde.fokker_planck_residual(log_q, x, 0.3, sde.vp_drift, sde.vp_diffusion)
    assert (r.residual.abs() <= 64 * torch.finfo(F64).eps * r.scale).all()
    e1 = sde.fokker_planck_residual(log_q, x, 0.3, sde.vp_drift, sde.vp_diffusion, dt=0.02).residual.abs().max()
    e2 = sde.fokker_planck_residual(log_q, x, 0.3, sde.vp_drift, sde.vp_diffusion, dt=0.01).residual.abs().max()
    assert 3.8 < (e1 / e2).item() < 4.2  # central difference: error ~ dt^2


# ---------------------------------------------------------------------------------------------
# Reverse SDE and probability-flow ODE
# ---------------------------------------------------------------------------------------------
def test_reverse_and_pf_drifts_gaussian() -> None:
    x = torch.randn(7, 1, generator=gen(2), dtype=F64)
    t = 0.6
    b, vv = beta(t), v(t)
    torch.testing.assert_close(sde.reverse_sde_drift(x, t, gauss_score), -0.5 * b * x + b * x / vv, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.pf_ode_drift(x, t, gauss_score), -0.5 * b * x + 0.5 * b * x / vv, rtol=1e-13, atol=0)


def test_pf_ode_solve_gaussian_flow_and_inverse() -> None:
    # For Gaussian data the flow is linear: x_t = x_1 sqrt(v(t) / v(1)) (it keeps each quantile of N(0, v(t))).
    x1 = torch.linspace(-3, 3, 13, dtype=F64)[:, None]
    for t in (0.5, 0.0):
        exact = x1 * math.sqrt(v(t) / v(1.0))
        e200 = (sde.pf_ode_solve(x1, 1.0, t, gauss_score, 200) - exact).abs().max().item()
        e400 = (sde.pf_ode_solve(x1, 1.0, t, gauss_score, 400) - exact).abs().max().item()
        assert e200 < 1e-6 and 12 < e200 / e400 < 20  # RK4: global error O(h^4), halving h divides it by ~16
    x0 = sde.pf_ode_solve(x1, 1.0, 0.0, gauss_score, 200)
    back = sde.pf_ode_solve(x0, 0.0, 1.0, gauss_score, 200)
    torch.testing.assert_close(back, x1, rtol=1e-6, atol=1e-6)
    _, path = sde.pf_ode_solve(x1, 1.0, 0.0, gauss_score, 10, record=True)
    assert len(path) == 11


def test_euler_maruyama_one_step_and_variance() -> None:
    x1 = torch.randn(4, 2, generator=gen(3), dtype=F64)
    out = sde.euler_maruyama_reverse(x1, gauss_score, 1, gen(4))
    z = torch.randn(4, 2, generator=gen(4), dtype=F64)
    by_hand = x1 - 1.0 * (-0.5 * beta(1) * x1 + beta(1) * x1 / v(1)) + math.sqrt(beta(1)) * z
    torch.testing.assert_close(out, by_hand, rtol=1e-13, atol=1e-13)
    # variance of the scheme, N = 20 steps, vs the exact linear recursion
    N, V = 20, v(1.0)
    for i in range(N):
        t = 1 - i / N
        V = (1 + beta(t) / (2 * N) - beta(t) / (N * v(t))) ** 2 * V + beta(t) / N
    n = 200_000
    x = sde.euler_maruyama_reverse(math.sqrt(v(1.0)) * torch.randn(n, 1, generator=gen(5), dtype=F64),
                                   gauss_score, N, gen(6))
    assert abs(x.var().item() - V) < 5 * V * math.sqrt(2 / n)


# ---------------------------------------------------------------------------------------------
# Langevin
# ---------------------------------------------------------------------------------------------
def test_langevin_one_step_and_stationary_variance() -> None:
    x = torch.randn(6, 2, generator=gen(7), dtype=F64)
    s = torch.tensor([[1.0, -2.0]], dtype=F64)
    out = sde.langevin(x, lambda y: s.expand_as(y), 0.3, 1, gen(8))
    z = torch.randn(6, 2, generator=gen(8), dtype=F64)
    torch.testing.assert_close(out, x + 0.15 * s + math.sqrt(0.3) * z, rtol=1e-14, atol=1e-14)
    # N(0, s2): stationary variance s2 / (1 - h / (4 s2))
    s2, h, n = 2.0, 1.0, 100_000
    y = sde.langevin(math.sqrt(s2) * torch.randn(n, 1, generator=gen(9), dtype=F64), lambda y: -y / s2, h, 80, gen(10))
    target = s2 / (1 - h / (4 * s2))
    assert abs(y.var().item() - target) < 5 * target * math.sqrt(2 / n)


def test_annealed_langevin_steps_and_single_level() -> None:
    assert sde.annealed_step_sizes([1.0, 0.1, 0.01], 2e-5) == pytest.approx([0.2, 2e-3, 2e-5], rel=1e-12)
    x = torch.randn(5, 2, generator=gen(11), dtype=F64)
    one = sde.annealed_langevin(x, [lambda y: -y], [0.1], 3, gen(12))
    torch.testing.assert_close(one, sde.langevin(x, lambda y: -y, 0.1, 3, gen(12)), rtol=0, atol=0)
    out, path = sde.annealed_langevin(x, [lambda y: -y, lambda y: -2 * y], [0.1, 0.05], 3, gen(13), record=True)
    assert len(path) == 7 and torch.equal(path[-1], out)


# ---------------------------------------------------------------------------------------------
# ValueErrors
# ---------------------------------------------------------------------------------------------
def test_value_errors() -> None:
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="step"):
        sde.langevin(x, lambda y: -y, 0.0, 10)
    with pytest.raises(ValueError, match="step"):
        sde.langevin(x, lambda y: -y, -1.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        sde.langevin(x, lambda y: -y, 0.1, 0)
    with pytest.raises(ValueError, match="finite"):
        sde.langevin(torch.tensor([[math.nan, 0.0]], dtype=F64), lambda y: -y, 0.1, 1)
    with pytest.raises(ValueError, match="shape"):
        sde.langevin(x, lambda y: y[:, :1], 0.1, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sde.pf_ode_drift(x, 1.5, gauss_score)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sde.vp_drift(x, -0.1)
    with pytest.raises(ValueError, match="steps"):
        sde.pf_ode_solve(x, 1.0, 0.0, gauss_score, 0)
    with pytest.raises(ValueError, match="t0"):
        sde.pf_ode_solve(x, 0.5, 0.5, gauss_score, 10)
    with pytest.raises(ValueError, match="t_end < t_start"):
        sde.euler_maruyama_reverse(x, gauss_score, 10, t_start=0.2, t_end=0.5)
    with pytest.raises(ValueError, match="sigma_max"):
        sde.ve_sigma(0.5, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sde.ve_sigma(2.0)
    with pytest.raises(ValueError, match="dt"):
        sde.fokker_planck_residual(heat_log_density, x, 0.4, zero_drift, lambda t: torch.ones(()), dt=0.0)
    with pytest.raises(ValueError, match="t \\+- dt"):
        sde.fokker_planck_residual(heat_log_density, x, 0.01, zero_drift, lambda t: torch.ones(()), dt=0.1)
    with pytest.raises(ValueError, match="one step size per score"):
        sde.annealed_langevin(x, [lambda y: -y], [0.1, 0.2], 2)
    with pytest.raises(ValueError, match="h0"):
        sde.annealed_step_sizes([1.0], 0.0)
