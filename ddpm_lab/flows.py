"""Flow matching and stochastic interpolants, the likelihood from an ODE, and the SNR view of the bound (Chapter 12).

An *interpolant* is x_t = a_t x_0 + s_t eps with eps ~ N(0, I) independent of x_0 and t in [0, 1]: data at
t = 0, (nearly) pure noise at t = 1 (Albergo & Vanden-Eijnden 2023, Eq. 2.1; Lipman et al. 2023, Eq. 20;
Liu et al. 2023, Eq. 1). Its velocity v(x, t) = E[a_t' x_0 + s_t' eps | x_t = x] transports the marginals;
for a Gaussian mixture it is exact (:func:`mixture_velocity`). :func:`ode_sample` integrates it from noise to
data, :func:`ode_log_likelihood` gives log q(x_0) by the instantaneous change of variables (Chen et al. 2018,
Thm. 1), and :func:`continuous_vlb_gaussian` / :func:`discrete_vlb_gaussian` are the bound of Kingma et al.
(2021), Eqs. 13 and 18, for Gaussian data. Everything is float64.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .gaussians import GaussianMixture
from .schedules import vp_alpha_bar, vp_beta, vp_log_alpha_bar

__all__ = ["PathCoefficients", "vp_path", "straight_path", "path_coefficients", "PATHS",
           "mixture_posterior_means", "mixture_velocity", "divergence", "ode_sample", "ode_log_likelihood",
           "gaussian_mmse", "continuous_vlb_gaussian", "discrete_vlb_gaussian"]

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


class PathCoefficients(NamedTuple):
    """a_t, s_t, their time derivatives, and s_t s_t' = (1/2) d(s_t^2)/dt, all float64 tensors.

    ``s_ds`` is kept separately because it stays finite where s_t' does not (the VP path at t = 0, where
    s_t = 0 and s_t' = inf): the velocity needs s_t' only through s_t' E[eps | x_t] = s_t s_t' * (a finite term).
    """

    a: torch.Tensor
    s: torch.Tensor
    da: torch.Tensor
    ds: torch.Tensor
    s_ds: torch.Tensor


def _time(t: float | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    if not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails too
        bad = t[~((t >= 0) & (t <= 1))].flatten()[0].item()
        raise ValueError(f"t must lie in [0, 1], got {bad!r}")
    return t


def vp_path(t: float | torch.Tensor) -> PathCoefficients:
    """The VP path a_t = sqrt(alpha_bar(t)), s_t = sqrt(1 - alpha_bar(t)) of the VP SDE (Song et al. 2021, Eq. 29),
    with a_t' = -beta(t) a_t / 2 and s_t s_t' = beta(t) alpha_bar(t) / 2 (from d alpha_bar/dt = -beta alpha_bar);
    s_t' = s_t s_t' / s_t is +inf at t = 0."""
    t = _time(t)
    log_ab = vp_log_alpha_bar(t)
    ab, beta = vp_alpha_bar(t), vp_beta(t)
    a, s = torch.exp(0.5 * log_ab), torch.sqrt(-torch.expm1(log_ab))
    s_ds = 0.5 * beta * ab
    ds = torch.where(s > 0, s_ds / torch.where(s > 0, s, 1.0), torch.full_like(s, math.inf))
    return PathCoefficients(a, s, -0.5 * beta * a, ds, s_ds)


def straight_path(t: float | torch.Tensor) -> PathCoefficients:
    """The straight (rectified-flow) path a_t = 1 - t, s_t = t (Liu et al. 2023, Eq. 1; Lipman et al. 2023, Eq. 23
    with sigma_min = 0): data at t = 0, noise at t = 1, a_t' = -1, s_t' = 1."""
    t = _time(t)
    one = torch.ones_like(t)
    return PathCoefficients(1 - t, t, -one, one, t.clone())


PATHS: dict[str, Callable[[float | torch.Tensor], PathCoefficients]] = {"vp": vp_path, "straight": straight_path}


def path_coefficients(path: str, t: float | torch.Tensor) -> PathCoefficients:
    """The coefficients of the named path ``"vp"`` or ``"straight"`` at time t in [0, 1]."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {sorted(PATHS)}")
    return PATHS[path](t)


def _x(gm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim < 1 or x.shape[-1] != gm.d:
        raise ValueError(f"x must end in dimension d={gm.d}, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite")
    return x


def _posterior_terms(gm: GaussianMixture, x: torch.Tensor, a: float, s: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Responsibilities p(k | x_t), E[x_0 | x_t, k] and y_k = C_k^{-1} (x_t - a mu_k), C_k = a^2 Sigma_k + s^2 I."""
    if not (math.isfinite(a) and math.isfinite(s) and s >= 0 and (a != 0 or s > 0)):
        raise ValueError(f"need finite a, s with s >= 0 and (a, s) != (0, 0), got a={a}, s={s}")
    eye = torch.eye(gm.d, dtype=torch.float64)
    C = a * a * gm.covs + s * s * eye  # (K, d, d)
    L = torch.linalg.cholesky(C)
    diff = x.unsqueeze(-2) - a * gm.means  # (..., K, d)
    y = torch.cholesky_solve(diff.unsqueeze(-1), L).squeeze(-1)  # C_k^{-1} (x - a mu_k)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    log_joint = torch.log(gm.weights) - 0.5 * ((diff * y).sum(-1) + logdet)  # + const, shared by all k
    r = torch.softmax(log_joint, dim=-1)
    x0_k = gm.means + a * (gm.covs @ y.unsqueeze(-1)).squeeze(-1)  # mu_k + a Sigma_k C_k^{-1} (x - a mu_k)
    return r, x0_k, y


def mixture_posterior_means(gm: GaussianMixture, x: torch.Tensor, a: float, s: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x_0 | x_t = x], E[eps | x_t = x]) for x_t = a x_0 + s eps and x_0 from the mixture, for ANY a, s
    (not only a^2 + s^2 = 1). Within component k, (x_0, eps, x_t) are jointly Gaussian with
    Cov(x_t) = C_k = a^2 Sigma_k + s^2 I, so E[x_0 | x_t, k] = mu_k + a Sigma_k C_k^{-1} (x_t - a mu_k) and
    E[eps | x_t, k] = s C_k^{-1} (x_t - a mu_k); both are weighted by p(k | x_t) of N(a mu_k, C_k)."""
    x = _x(gm, x)
    r, x0_k, y = _posterior_terms(gm, x, float(a), float(s))
    r = r.unsqueeze(-1)
    return (r * x0_k).sum(-2), float(s) * (r * y).sum(-2)


def mixture_velocity(gm: GaussianMixture, x: torch.Tensor, t: float, path: str = "vp") -> torch.Tensor:
    """The exact interpolant velocity v(x, t) = E[a_t' x_0 + s_t' eps | x_t = x] (Albergo & Vanden-Eijnden 2023,
    Eq. 2.10; Lipman et al. 2023, Eq. 8 marginalized) for x_0 from the mixture ``gm``, on the named path.

    Computed as a_t' E[x_0 | x_t] + (s_t s_t') sum_k p(k | x_t) C_k^{-1} (x_t - a_t mu_k), which is finite at
    t = 0 also on the VP path (where s_t' = inf but s_t s_t' = beta(0) / 2). ``t`` is one time for the batch."""
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"t must be a single time for the whole batch, got shape {tuple(t.shape)}")
        t = float(t.item())
    c = path_coefficients(path, float(t))
    x = _x(gm, x)
    r, x0_k, y = _posterior_terms(gm, x, c.a.item(), c.s.item())
    r = r.unsqueeze(-1)
    return c.da.item() * (r * x0_k).sum(-2) + c.s_ds.item() * (r * y).sum(-2)


def divergence(velocity: Velocity, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(x, t), div_x v(x, t)) with the divergence exact by autograd: one backward pass per dimension
    (sum_i d v_i / d x_i), for the few dimensions of the toy data. x has shape (n, d)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity(xg, t)
        if v.shape != x.shape:
            raise ValueError(f"velocity returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
        div = torch.zeros(x.shape[0], dtype=torch.float64)
        for i in range(x.shape[1]):
            g, = torch.autograd.grad(v[:, i].sum(), xg, retain_graph=i < x.shape[1] - 1)
            div = div + g[:, i]
    return v.detach(), div.detach()


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _check_interval(t_start: float, t_end: float) -> None:
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
    if t_start == t_end:
        raise ValueError(f"t_start and t_end must differ, got {t_start}")


def ode_sample(velocity: Velocity, x_1: torch.Tensor, steps: int, method: str = "rk4", t_start: float = 1.0,
               t_end: float = 0.0, return_path: bool = False) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t_start (default 1: noise) to t_end (default 0: data) with ``steps`` equal
    steps of classical RK4 or of Euler (Kloeden & Platen 1992, Sec. 8.1; RK4's local error is O(h^5), Euler's O(h^2)).

    RK4 evaluates v at both ends of each step, so the velocity must be finite at t = 0 and t = 1: the exact
    velocities of :func:`mixture_velocity` are (the VP path's s_t' = inf at t = 0 enters only as s_t s_t');
    for another velocity with an endpoint singularity, stop short of it with t_start / t_end.
    Returns x at t_end, or with ``return_path`` the (steps + 1, ...) trajectory."""
    steps = _check_steps(steps)
    _check_interval(t_start, t_end)
    if method not in ("rk4", "euler"):
        raise ValueError(f"unknown method {method!r}; choose 'rk4' or 'euler'")
    x = torch.as_tensor(x_1, dtype=torch.float64).clone()
    if not torch.isfinite(x).all():
        raise ValueError("x_1 must be finite")
    h = (t_end - t_start) / steps
    path = [x]
    for i in range(steps):
        t = t_start + i * h
        t_next = t_end if i == steps - 1 else t_start + (i + 1) * h
        if method == "euler":
            x = x + h * velocity(x, t)
        else:
            mid = t + 0.5 * h
            k1 = velocity(x, t)
            k2 = velocity(x + 0.5 * h * k1, mid)
            k3 = velocity(x + 0.5 * h * k2, mid)
            k4 = velocity(x + h * k3, t_next)
            x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        if return_path:
            path.append(x)
    if not torch.isfinite(x).all():
        raise ValueError(f"the ODE solution is not finite after {steps} steps; the velocity is singular or too stiff")
    return torch.stack(path) if return_path else x


def _standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def ode_log_likelihood(velocity: Velocity, x_0: torch.Tensor, steps: int,
                       log_prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    """log q(x_0) by the instantaneous change of variables (Chen et al. 2018, Thm. 1; Grathwohl et al. 2019, Eq. 4):
    along dx/dt = v(x, t), d log q_t(x_t)/dt = -div v(x_t, t), so

        log q_0(x_0) = log q_1(x_1) + int_0^1 div v(x_t, t) dt,

    integrated forward from x_0 with ``steps`` RK4 steps on the augmented state (x, int div v), the divergence
    exact by autograd (:func:`divergence`). ``log_prior`` is log q_1 (default log N(0, I)). x_0 has shape (n, d)."""
    steps = _check_steps(steps)
    _check_interval(t_start, t_end)
    x = torch.as_tensor(x_0, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"x_0 must have shape (n, d), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x_0 must be finite")
    log_prior = log_prior or _standard_normal_log_prob
    h = (t_end - t_start) / steps
    integral = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(steps):
        t = t_start + i * h
        t_next = t_end if i == steps - 1 else t_start + (i + 1) * h
        mid = t + 0.5 * h
        k1, d1 = divergence(velocity, x, t)
        k2, d2 = divergence(velocity, x + 0.5 * h * k1, mid)
        k3, d3 = divergence(velocity, x + 0.5 * h * k2, mid)
        k4, d4 = divergence(velocity, x + h * k3, t_next)
        x = x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + (h / 6.0) * (d1 + 2 * d2 + 2 * d3 + d4)
    out = log_prior(x) + integral
    if not torch.isfinite(out).all():
        raise ValueError(f"the log-likelihood is not finite after {steps} steps; the velocity is singular or too stiff")
    return out


# ---------------------------------------------------------------------------------------------
# The SNR view of the bound (Kingma et al. 2021), for Gaussian data x_0 ~ N(m, data_var) per coordinate
# ---------------------------------------------------------------------------------------------
def _positive(name: str, v: torch.Tensor) -> torch.Tensor:
    if not bool((v > 0).all()) or not bool(torch.isfinite(v).all()):
        bad = v[~((v > 0) & torch.isfinite(v))].flatten()[0].item()
        raise ValueError(f"{name} must be positive and finite, got {bad!r}")
    return v


def gaussian_mmse(snr: float | torch.Tensor, data_var: float) -> torch.Tensor:
    """mmse(gamma) = E (x_0 - E[x_0 | x_t])^2 = data_var / (1 + gamma data_var) for x_0 ~ N(m, data_var) and
    x_t = a x_0 + s eps with gamma = a^2 / s^2 (the Gaussian posterior variance 1 / (1 / data_var + gamma))."""
    _positive("data_var", torch.as_tensor(data_var, dtype=torch.float64))
    g = torch.as_tensor(snr, dtype=torch.float64)
    if not bool((g >= 0).all()):
        raise ValueError(f"SNR must be >= 0, got {g[~(g >= 0)].flatten()[0].item()!r}")
    return data_var / (1.0 + g * data_var)


def continuous_vlb_gaussian(snr_min: float, snr_max: float, data_var: float) -> float:
    """L_inf = (1/2) int_{SNR_min}^{SNR_max} mmse(gamma) d gamma = (1/2) log((1 + data_var SNR_max) /
    (1 + data_var SNR_min)) per coordinate: the continuous-time diffusion loss of Kingma et al. (2021), Eq. 18
    (their L_inf, changed to the variable gamma = SNR(t)), with the optimal denoiser for Gaussian data."""
    lo, hi = (torch.as_tensor(v, dtype=torch.float64) for v in (snr_min, snr_max))
    _positive("data_var", torch.as_tensor(data_var, dtype=torch.float64))
    if not (bool(torch.isfinite(hi)) and 0 <= lo.item() <= hi.item()):
        raise ValueError(f"need 0 <= snr_min <= snr_max < inf, got snr_min={snr_min}, snr_max={snr_max}")
    return 0.5 * (math.log1p(data_var * hi.item()) - math.log1p(data_var * lo.item()))


def discrete_vlb_gaussian(snrs: torch.Tensor, data_var: float) -> float:
    """L_T = (1/2) sum_{i=1}^T (SNR(t_{i-1}) - SNR(t_i)) mmse(SNR(t_i)) per coordinate: the sum of Ho et al.'s
    L_{t-1} with sigma_t^2 = beta_tilde_t and the optimal mean (Kingma et al. 2021, Eq. 13), for Gaussian data.
    ``snrs`` = SNR(t_0) > SNR(t_1) > ... > SNR(t_T), finite, length T + 1 >= 2."""
    g = torch.as_tensor(snrs, dtype=torch.float64)
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"snrs must be 1-D with at least 2 entries (T >= 1), got shape {tuple(g.shape)}")
    _positive("SNR", g)
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("snrs must be strictly decreasing: SNR(t_0) > SNR(t_1) > ... > SNR(t_T)")
    return 0.5 * float(((g[:-1] - g[1:]) * gaussian_mmse(g[1:], data_var)).sum())
