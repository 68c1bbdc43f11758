"""ddpm_lab.flows against closed forms that the module does not compute."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lab import flows as F
from ddpm_lab.gaussians import GaussianMixture
from ddpm_lab.toy import mixture

EPS = torch.finfo(torch.float64).eps


def one_gaussian(m: float = 0.5, var: float = 0.09) -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[m]], dtype=torch.float64),
                           torch.tensor([[var]], dtype=torch.float64))


def test_paths_against_closed_forms() -> None:
    t = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64)
    c = F.straight_path(t)
    assert torch.equal(c.a, 1 - t) and torch.equal(c.s, t) and (c.da == -1).all() and (c.ds == 1).all()
    v = F.vp_path(t)
    ab = torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2))
    assert torch.allclose(v.a, ab.sqrt(), rtol=1e-14, atol=0) and torch.allclose(v.s**2, 1 - ab, rtol=1e-12, atol=1e-16)
    # derivatives by central differences at interior t
    h = 1e-6
    ti = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    lo, hi, mid = F.vp_path(ti - h), F.vp_path(ti + h), F.vp_path(ti)
    assert torch.allclose((hi.a - lo.a) / (2 * h), mid.da, rtol=1e-7)
    assert torch.allclose((hi.s - lo.s) / (2 * h), mid.ds, rtol=1e-7)
    assert torch.allclose(mid.s * mid.ds, mid.s_ds, rtol=1e-13)
    assert math.isinf(F.vp_path(0.0).ds.item()) and F.vp_path(0.0).s_ds.item() == pytest.approx(0.05)


def test_velocity_of_one_gaussian_is_linear_closed_form() -> None:
    # x_0 ~ N(m, V): x_t ~ N(a m, a^2 V + s^2); E[x_0 | x] = m + a V (x - a m) / C, E[eps | x] = s (x - a m) / C
    m, V = 0.5, 0.09
    gm = one_gaussian(m, V)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    for path, t in (("straight", 0.3), ("straight", 0.0), ("straight", 1.0), ("vp", 0.4), ("vp", 0.0)):
        c = F.path_coefficients(path, t)
        a, s, da, s_ds = c.a.item(), c.s.item(), c.da.item(), c.s_ds.item()
        C = a * a * V + s * s
        expected = da * (m + a * V * (x - a * m) / C) + s_ds * (x - a * m) / C
        assert torch.allclose(F.mixture_velocity(gm, x, t, path), expected, rtol=1e-13, atol=1e-13)


def test_posterior_means_for_any_a_s() -> None:
    # a^2 + s^2 != 1: x_t = 2 x_0 + 3 eps, one Gaussian; regression coefficients in closed form
    m, V, a, s = -0.2, 0.5, 2.0, 3.0
    x = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)
    x0, eps = F.mixture_posterior_means(one_gaussian(m, V), x, a, s)
    C = a * a * V + s * s
    assert torch.allclose(x0, m + a * V / C * (x - a * m), rtol=1e-14)
    assert torch.allclose(eps, s / C * (x - a * m), rtol=1e-14)
    # the two posterior means reproduce x: a E[x_0|x] + s E[eps|x] = x
    gm = mixture()
    xs = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0, eps = F.mixture_posterior_means(gm, xs, 0.7, 1.3)
    assert torch.allclose(0.7 * x0 + 1.3 * eps, xs, rtol=0, atol=1e-13)


def test_vp_velocity_is_probability_flow() -> None:
    gm = mixture()
    x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.05, 0.3, 1.0):
        c = F.vp_path(t)
        a, s = c.a.item(), c.s.item()
        q = GaussianMixture(gm.weights, a * gm.means, a * a * gm.covs + s * s * torch.eye(2, dtype=torch.float64))
        beta = 0.1 + 19.9 * t
        pf = -0.5 * beta * (x + q.score(x))
        assert torch.allclose(F.mixture_velocity(gm, x, t, "vp"), pf, rtol=1e-10, atol=1e-10)


def test_ode_sample_linear_flow() -> None:
    # dx/dt = x from t = 1 to 0: x(0) = x(1) e^{-1}; RK4 error ~ h^4 / 120, Euler ~ h / 2 (relative)
    x1 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    out = F.ode_sample(lambda x, t: x, x1, 20)
    assert torch.allclose(out, x1 * math.exp(-1), rtol=1e-7)
    eul = F.ode_sample(lambda x, t: x, x1, 1000, method="euler")
    assert torch.allclose(eul, x1 * (1 - 1e-3) ** 1000, rtol=1e-12)
    path = F.ode_sample(lambda x, t: x, x1, 4, return_path=True)
    assert path.shape == (5, 1, 2) and torch.equal(path[0], x1)


def test_ode_log_likelihood_of_a_gaussian() -> None:
    # straight path, x_0 ~ N(m, V): exact velocity, log q(x_0) = log N(x_0; m, V)
    m, V = 0.5, 0.09
    gm = one_gaussian(m, V)
    x0 = torch.tensor([[0.1], [0.5], [1.0]], dtype=torch.float64)
    ll = F.ode_log_likelihood(lambda x, t: F.mixture_velocity(gm, x, t, "straight"), x0, 100)
    exact = -0.5 * (x0[:, 0] - m) ** 2 / V - 0.5 * math.log(2 * math.pi * V)
    assert torch.allclose(ll, exact, atol=1e-7)


def test_divergence_of_linear_field() -> None:
    A = torch.tensor([[1.0, 2.0], [3.0, -5.0]], dtype=torch.float64)
    v, div = F.divergence(lambda x, t: x @ A.T * t, torch.ones(3, 2, dtype=torch.float64), 2.0)
    assert torch.allclose(div, torch.full((3,), -8.0, dtype=torch.float64))


def test_snr_bound_closed_forms() -> None:
    V = 0.09
    assert F.gaussian_mmse(torch.tensor([0.0, 1.0]), V).tolist() == pytest.approx([V, V / (1 + V)])
    assert F.continuous_vlb_gaussian(0.5, 100.0, V) == pytest.approx(0.5 * math.log((1 + 9.0) / (1 + 0.045)), rel=1e-14)
    # T = 1: (1/2)(g0 - g1) mmse(g1); T = 2 by hand
    assert F.discrete_vlb_gaussian(torch.tensor([4.0, 1.0]), V) == pytest.approx(0.5 * 3.0 * V / (1 + V), rel=1e-14)
    by_hand = 0.5 * (2.0 * V / (1 + 2 * V) + 1.5 * V / (1 + 0.5 * V))
    assert F.discrete_vlb_gaussian(torch.tensor([4.0, 2.0, 0.5]), V) == pytest.approx(by_hand, rel=1e-14)
    # many steps: close to the integral (from above: mmse decreases in SNR)
    g = torch.exp(torch.linspace(math.log(100.0), math.log(0.5), 20001, dtype=torch.float64))
    L = F.discrete_vlb_gaussian(g, V)
    assert 0 < L - F.continuous_vlb_gaussian(0.5, 100.0, V) < 1e-3


@pytest.mark.parametrize("call", [
    lambda: F.vp_path(1.5),
    lambda: F.straight_path(-0.1),
    lambda: F.vp_path(float("nan")),
    lambda: F.path_coefficients("ve", 0.5),
    lambda: F.mixture_velocity(mixture(), torch.zeros(3, 3), 0.5),
    lambda: F.mixture_velocity(mixture(), torch.full((3, 2), float("nan")), 0.5),
    lambda: F.mixture_velocity(mixture(), torch.zeros(3, 2), 0.5, path="cosine"),
    lambda: F.mixture_posterior_means(mixture(), torch.zeros(3, 2), 0.0, 0.0),
    lambda: F.ode_sample(lambda x, t: x, torch.zeros(2, 2), 0),
    lambda: F.ode_sample(lambda x, t: x, torch.zeros(2, 2), 2.5),
    lambda: F.ode_sample(lambda x, t: x, torch.zeros(2, 2), 5, method="heun"),
    lambda: F.ode_sample(lambda x, t: x, torch.zeros(2, 2), 5, t_end=1.2),
    lambda: F.ode_sample(lambda x, t: x, torch.full((2, 2), float("inf")), 5),
    lambda: F.ode_log_likelihood(lambda x, t: x, torch.zeros(2, 2), 0),
    lambda: F.ode_log_likelihood(lambda x, t: x, torch.zeros(2), 3),
    lambda: F.gaussian_mmse(-1.0, 0.1),
    lambda: F.gaussian_mmse(1.0, 0.0),
    lambda: F.continuous_vlb_gaussian(10.0, 1.0, 0.1),
    lambda: F.continuous_vlb_gaussian(1.0, float("inf"), 0.1),
    lambda: F.discrete_vlb_gaussian(torch.tensor([1.0, 2.0]), 0.1),
    lambda: F.discrete_vlb_gaussian(torch.tensor([1.0]), 0.1),
    lambda: F.discrete_vlb_gaussian(torch.tensor([float("inf"), 1.0]), 0.1),
])
def test_bad_input_raises(call) -> None:
    with pytest.raises(ValueError):
        call()
