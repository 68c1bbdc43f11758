"""Continuous time: Langevin dynamics, the VP and VE SDEs, their Fokker-Planck equation, the reverse-time SDE and
the probability-flow ODE (Chapter 11).

Time t runs over [0, 1]; the paper's discrete step i = 1..T is t = i / T. The VP SDE of Song et al. (2021, Eq. 11),

    dx = f(x, t) dt + g(t) dW,   f(x, t) = -beta(t) x / 2,   g(t) = sqrt(beta(t)),

with beta(t) = beta_min + t (beta_max - beta_min) (:func:`ddpm_lab.schedules.vp_beta`), is the T -> infinity limit of
Ho et al.'s chain. A *score* here is a callable ``score(x, t)`` returning grad_x log q(x_t) (shape of x, float64
tensors; t a Python float); Langevin samplers take ``score(x)`` at a fixed target. Everything is float64.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import torch

from .gaussians import GaussianMixture
from .schedules import VP_BETA_MAX, VP_BETA_MIN, vp_beta, vp_log_alpha_bar

__all__ = ["vp_drift", "vp_diffusion", "vp_marginal", "ve_sigma", "ve_diffusion", "FPResidual",
           "fokker_planck_residual", "reverse_sde_drift", "pf_ode_drift", "euler_maruyama_reverse", "pf_ode_solve",
           "langevin", "annealed_langevin", "annealed_step_sizes"]

Score = Callable[[torch.Tensor, float], torch.Tensor]
StaticScore = Callable[[torch.Tensor], torch.Tensor]
Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Diffusion = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _count(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)


def _time(t: float, name: str = "t") -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"{name} must be a single time in [0, 1], got shape {tuple(t.shape)}")
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= t <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {t!r}")
    return float(t)


def _finite(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    if not bool(torch.isfinite(x).all()):
        bad = x[~torch.isfinite(x)].flatten()[0].item()
        raise ValueError(f"{name} must be finite, got {bad}")
    return x


def _same_shape(out: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    if out.shape != x.shape:
        raise ValueError(f"{what} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}")
    return out


# ---------------------------------------------------------------------------------------------
# The forward SDEs
# ---------------------------------------------------------------------------------------------
def vp_drift(x: torch.Tensor, t: float | torch.Tensor, beta_min: float = VP_BETA_MIN,
             beta_max: float = VP_BETA_MAX) -> torch.Tensor:
    """f(x, t) = -beta(t) x / 2, the drift of the VP SDE (Song et al. 2021, Eq. 11). Differentiable in x and t."""
    return -0.5 * vp_beta(t, beta_min, beta_max).to(x.dtype) * x


def vp_diffusion(t: float | torch.Tensor, beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX
                 ) -> torch.Tensor:
    """g(t) = sqrt(beta(t)), the diffusion coefficient of the VP SDE (Song et al. 2021, Eq. 11)."""
    return torch.sqrt(vp_beta(t, beta_min, beta_max))


def vp_marginal(data: GaussianMixture, t: float | torch.Tensor, beta_min: float = VP_BETA_MIN,
                beta_max: float = VP_BETA_MAX) -> GaussianMixture:
    """q(x_t) of the VP SDE started from the mixture ``data``: weights w_k, means a mu_k, covariances
    a^2 Sigma_k + s^2 I with a = sqrt(alpha_bar(t)), s^2 = 1 - alpha_bar(t) (Song et al. 2021, Eq. 29). ``t`` may be a
    tensor that requires grad: the mixture's log_prob and score are then differentiable in t."""
    log_ab = vp_log_alpha_bar(t, beta_min, beta_max)
    return data.scaled(torch.exp(0.5 * log_ab), -torch.expm1(log_ab))


def ve_sigma(t: float | torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t, the noise scale of the VE SDE (Song et al. 2021, Eq. 31):
    x_t = x_0 + sqrt(sigma(t)^2 - sigma(0)^2) z."""
    _positive(sigma_min, "sigma_min")
    _positive(sigma_max, "sigma_max")
    if sigma_max <= sigma_min:
        raise ValueError(f"need sigma_max > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    t = torch.as_tensor(t, dtype=torch.float64)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got {t[~((t >= 0) & (t <= 1))].flatten()[0].item()!r}")
    return sigma_min * (sigma_max / sigma_min) ** t


def ve_diffusion(t: float | torch.Tensor, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """g(t) = sqrt(d sigma(t)^2 / dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min)): the VE SDE dx = g(t) dW has no
    drift (Song et al. 2021, Eq. 30-31)."""
    return ve_sigma(t, sigma_min, sigma_max) * math.sqrt(2.0 * math.log(sigma_max / sigma_min))


# ---------------------------------------------------------------------------------------------
# Fokker-Planck
# ---------------------------------------------------------------------------------------------
class FPResidual(NamedTuple):
    """The Fokker-Planck residual divided by p (see :func:`fokker_planck_residual`) and the sum of the absolute
    values of its terms (the scale against which its rounding error is measured)."""

    residual: torch.Tensor
    scale: torch.Tensor


def fokker_planck_residual(log_density: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                           t: float, drift: Drift, diffusion: Diffusion, dt: float | None = None) -> FPResidual:
    """The residual of the Fokker-Planck equation of dx = f dt + g dW (Song et al. 2021, Eq. 48 with scalar g),

        d p / dt = -div(f p) + (g^2 / 2) Laplacian p,

    divided by p, i.e. in terms of l = log p (p > 0):

        R = dl/dt + div f + f . grad l - (g^2 / 2) (Laplacian l + ||grad l||^2),

    at the points ``x`` (shape (n, d)) and time t in [0, 1]. ``log_density(x, t)`` returns log p, shape (n,),
    differentiable in x and in the 0-d float64 tensor t; ``drift(x, t)`` returns f, shape (n, d); ``diffusion(t)``
    returns g. Every x-derivative is by autograd (exact up to float64 rounding). The time derivative is by autograd
    too when ``dt`` is None, else by the central difference (l(t + dt) - l(t - dt)) / (2 dt), whose error is
    dt^2 l'''(t) / 6 + O(dt^4) (t +- dt must lie in [0, 1]). R = 0 for the true density of the SDE, up to rounding
    (about 1e-16 times ``scale``) or the difference error.
    """
    t = _time(t)
    x = _finite(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    if dt is not None:
        dt = _positive(dt, "dt")
        if t - dt < 0 or t + dt > 1:
            raise ValueError(f"t +- dt must lie in [0, 1], got t={t}, dt={dt}")
    x = x.detach().double().requires_grad_(True)
    ell = log_density(x, torch.tensor(t, dtype=torch.float64))
    if ell.shape != x.shape[:1]:
        raise ValueError(f"log_density returned shape {tuple(ell.shape)}, expected {tuple(x.shape[:1])}")
    grad_l, = torch.autograd.grad(ell.sum(), x, create_graph=True)
    lap_l = _divergence(grad_l, x)
    if dt is None:
        dl_dt = _time_derivative(log_density, x.detach(), t)
    else:
        with torch.no_grad():
            up = log_density(x.detach(), torch.tensor(t + dt, dtype=torch.float64))
            down = log_density(x.detach(), torch.tensor(t - dt, dtype=torch.float64))
        dl_dt = (up - down) / (2 * dt)
    tt_d = torch.tensor(t, dtype=torch.float64)
    f = drift(x, tt_d)
    if f.shape != x.shape:
        raise ValueError(f"drift returned shape {tuple(f.shape)} for x of shape {tuple(x.shape)}")
    div_f = _divergence(f, x)
    g2 = diffusion(tt_d).double() ** 2
    terms = [dl_dt, div_f, (f * grad_l).sum(-1), -0.5 * g2 * lap_l, -0.5 * g2 * (grad_l**2).sum(-1)]
    residual = sum(terms)
    scale = sum(term.abs() for term in terms)
    return FPResidual(residual.detach(), scale.detach())


def _divergence(field: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d field_i / d x_i per row, by autograd (rows are independent points); 0 where field ignores x."""
    div = torch.zeros(x.shape[0], dtype=torch.float64)
    if not field.requires_grad:
        return div
    for i in range(x.shape[1]):
        g, = torch.autograd.grad(field[:, i].sum(), x, retain_graph=True, allow_unused=True)
        if g is not None:
            div = div + g[:, i]
    return div


def _time_derivative(log_density: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                     t: float) -> torch.Tensor:
    """d log p(x_j, t) / dt for every row x_j, by forward-mode autograd (one pass, exact up to rounding)."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        tt = fwAD.make_dual(torch.tensor(t, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        ell = log_density(x, tt)
        tangent = fwAD.unpack_dual(ell).tangent
    if tangent is None:  # log p does not depend on t
        return torch.zeros(x.shape[0], dtype=torch.float64)
    return tangent.detach()


# ---------------------------------------------------------------------------------------------
# Reverse-time SDE and probability-flow ODE
# ---------------------------------------------------------------------------------------------
def reverse_sde_drift(x: torch.Tensor, t: float, score: Score, beta_min: float = VP_BETA_MIN,
                      beta_max: float = VP_BETA_MAX) -> torch.Tensor:
    """f(x, t) - g(t)^2 grad log q(x_t): the drift of the reverse-time VP SDE dx = [f - g^2 score] dt + g dW_bar,
    run from t = 1 down to 0 (Anderson 1982; Song et al. 2021, Eq. 6)."""
    t = _time(t)
    x = _finite(x)
    s = _same_shape(score(x, t), x, "score")
    return vp_drift(x, t, beta_min, beta_max) - vp_beta(t, beta_min, beta_max).item() * s


def pf_ode_drift(x: torch.Tensor, t: float, score: Score, beta_min: float = VP_BETA_MIN,
                 beta_max: float = VP_BETA_MAX) -> torch.Tensor:
    """f(x, t) - g(t)^2 grad log q(x_t) / 2: the velocity of the probability-flow ODE dx/dt, whose solutions have the
    marginals q(x_t) of the SDE (Song et al. 2021, Eq. 13)."""
    t = _time(t)
    x = _finite(x)
    s = _same_shape(score(x, t), x, "score")
    return vp_drift(x, t, beta_min, beta_max) - 0.5 * vp_beta(t, beta_min, beta_max).item() * s


def euler_maruyama_reverse(x_1: torch.Tensor, score: Score, steps: int, generator: torch.Generator | None = None,
                           t_start: float = 1.0, t_end: float = 0.0, beta_min: float = VP_BETA_MIN,
                           beta_max: float = VP_BETA_MAX, record: bool = False
                           ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Euler-Maruyama for the reverse-time VP SDE (Song et al. 2021, Eq. 6; Kloeden & Platen 1992, Sec. 9.1):
    with h = (t_start - t_end) / steps and t_i = t_start - i h,

        x_{i+1} = x_i - h [f(x_i, t_i) - g(t_i)^2 score(x_i, t_i)] + g(t_i) sqrt(h) z_i,   z_i ~ N(0, I),

    ``steps`` times (noise on every step, the last one included). Weak order 1: E[phi(x)] has error O(h).
    Returns x at t_end (and, with ``record``, the list of all iterates)."""
    steps = _count(steps, "steps")
    t_start, t_end = _time(t_start, "t_start"), _time(t_end, "t_end")
    if not t_end < t_start:
        raise ValueError(f"need t_end < t_start (the reverse SDE runs backwards), got t_start={t_start}, t_end={t_end}")
    x = _finite(x_1, "x_1").double()
    h = (t_start - t_end) / steps
    path = [x]
    for i in range(steps):
        t = t_start - i * h
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        g = math.sqrt(vp_beta(t, beta_min, beta_max).item())
        x = x - h * reverse_sde_drift(x, t, score, beta_min, beta_max) + g * math.sqrt(h) * z
        if record:
            path.append(x)
    return (x, path) if record else x


def pf_ode_solve(x: torch.Tensor, t0: float, t1: float, score: Score, steps: int, beta_min: float = VP_BETA_MIN,
                 beta_max: float = VP_BETA_MAX, record: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate the probability-flow ODE dx/dt = f - g^2 score / 2 (Song et al. 2021, Eq. 13) from t0 to t1 with
    ``steps`` classical Runge-Kutta (RK4) steps of equal size (global error O(h^4); Kloeden & Platen 1992, Sec. 8.3).
    t0 > t1 decodes (noise to data), t0 < t1 encodes; swapping t0 and t1 inverts the map up to the solver error."""
    steps = _count(steps, "steps")
    t0, t1 = _time(t0, "t0"), _time(t1, "t1")
    if t0 == t1:
        raise ValueError(f"need t0 != t1, got t0 = t1 = {t0}")
    x = _finite(x).double()
    h = (t1 - t0) / steps

    def v(y: torch.Tensor, t: float) -> torch.Tensor:
        return pf_ode_drift(y, min(max(t, 0.0), 1.0), score, beta_min, beta_max)

    path = [x]
    for i in range(steps):
        t = t0 + i * h
        k1 = v(x, t)
        k2 = v(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = v(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = v(x + h * k3, t1 if i == steps - 1 else t + h)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        if record:
            path.append(x)
    return (x, path) if record else x


# ---------------------------------------------------------------------------------------------
# Langevin dynamics
# ---------------------------------------------------------------------------------------------
def langevin(x: torch.Tensor, score: StaticScore, step: float, n_steps: int, generator: torch.Generator | None = None,
             record: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Unadjusted Langevin algorithm (Roberts & Tweedie 1996; Song & Ermon 2019, Eq. 4) targeting p:

        x <- x + (h / 2) grad log p(x) + sqrt(h) z,   z ~ N(0, I),

    ``n_steps`` times with step size h = ``step``. Its stationary law tends to p as h -> 0 (for N(0, s^2 I) it is
    N(0, s^2 / (1 - h / (4 s^2)) I), for h < 4 s^2)."""
    h = _positive(step, "step")
    n_steps = _count(n_steps, "n_steps")
    x = _finite(x).double()
    path = [x]
    for _ in range(n_steps):
        s = _same_shape(score(x), x, "score")
        x = x + 0.5 * h * s + math.sqrt(h) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        if record:
            path.append(x)
    return (x, path) if record else x


def annealed_step_sizes(sigmas: Sequence[float], h0: float) -> list[float]:
    """h_i = h0 sigma_i^2 / sigma_L^2, the step sizes of annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, where
    h0 is called epsilon), sigma_L the last (smallest) noise level: the signal-to-noise ratio of each step is then the
    same at every level."""
    h0 = _positive(h0, "h0")
    if len(sigmas) < 1:
        raise ValueError("sigmas must hold at least one noise level")
    sig = [_positive(s, "sigma") for s in sigmas]
    return [h0 * s**2 / sig[-1] ** 2 for s in sig]


def annealed_langevin(x: torch.Tensor, scores: Sequence[StaticScore], steps: Sequence[float], n_steps: int,
                      generator: torch.Generator | None = None, record: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1): for each level i (largest noise first), ``n_steps``
    Langevin steps (:func:`langevin`) with score ``scores[i]`` (that of the data blurred at noise level i) and step
    size ``steps[i]``, each level started where the previous one ended. Costs len(scores) * n_steps score calls."""
    if len(scores) != len(steps) or len(scores) < 1:
        raise ValueError(f"need one step size per score (at least one), got {len(scores)} scores and {len(steps)} steps")
    n_steps = _count(n_steps, "n_steps")
    for h in steps:
        _positive(h, "step")
    x = _finite(x).double()
    path = [x]
    for s, h in zip(scores, steps):
        out = langevin(x, s, h, n_steps, generator, record)
        if record:
            x, p = out
            path += p[1:]
        else:
            x = out
    return (x, path) if record else x
