"""The forward process, its Bayes posterior, and conversions between parameterizations.

Equation numbers are those of Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models".
Every function takes the :class:`~ddpm_lab.schedules.NoiseSchedule` first, then tensors whose first
dimension is the batch, then ``t``: an int (the same timestep for the whole batch) or a 1-D tensor of
per-example timesteps, the paper's t in 1..T (0..T where t = 0 means x_0 itself, as in q(x_t | x_0)).
A t outside a function's range raises a ValueError that names it.
Coefficients are computed in float64 and cast to the dtype of the data they multiply.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from .schedules import NoiseSchedule, check_t, extract

__all__ = [
    "q_step",
    "q_mean_variance",
    "q_sample",
    "q_posterior",
    "mu_tilde_from_eps",
    "predict_x0_from_eps",
    "predict_eps_from_x0",
    "score_from_eps",
    "eps_from_score",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "x0_from_mu",
    "eps_from_mu",
    "mu_from_score",
    "mu_from_v",
    "EpsModel",
    "p_mean_variance",
    "p_sample_step",
    "sample_ancestral",
    "sample_ancestral_from",
    "ddim_timesteps",
    "ddim_sigma",
    "ddim_step",
    "sample_ddim",
    "ddim_invert",
]

Timestep = int | torch.Tensor


def _at(coef: torch.Tensor, t: Timestep, x: torch.Tensor) -> torch.Tensor:
    """``coef[t]`` shaped to broadcast against ``x``, in ``x``'s dtype and on its device."""
    return extract(coef, t, x.shape).to(dtype=x.dtype, device=x.device)


def _valid(schedule: NoiseSchedule, t: Timestep, first: int = 1) -> Timestep:
    """``t`` itself, after checking that first <= t <= T (ValueError naming the value otherwise)."""
    check_t(t, schedule.T, first)
    return t


def _data(**tensors: torch.Tensor) -> None:
    """Check that each named tensor is floating point (the coefficients are cast to the data's dtype, so integer
    images would make every coefficient 0) and that they all have the same shape. Dtypes and shapes only: no
    host sync."""
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {got}: scale integer images to float in "
                             "[-1, 1] first (ddpm_lab.data.to_model_space)")
    (a, x), *rest = tensors.items()
    for b, y in rest:
        if y.shape != x.shape:
            raise ValueError(f"{a} and {b} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def _noise_like(x: torch.Tensor, eps: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if eps is None:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    _data(eps=eps)
    if eps.shape != x.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x has shape {tuple(x.shape)}")
    return eps


def q_step(
    schedule: NoiseSchedule,
    x_prev: torch.Tensor,
    t: Timestep,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), Eq. 2.

    ``x_prev`` is x_{t-1}, t in 1..T. ``eps`` (standard normal, same shape) may be passed to make the step a
    deterministic function of it.
    """
    _valid(schedule, t)
    _data(x_prev=x_prev)
    eps = _noise_like(x_prev, eps, generator)
    beta_t = _at(schedule.betas, t, x_prev)
    return torch.sqrt(1.0 - beta_t) * x_prev + torch.sqrt(beta_t) * eps


def q_mean_variance(schedule: NoiseSchedule, x0: torch.Tensor, t: Timestep) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Eq. 4.

    t in 0..T (t = 0: mean x_0, variance 0). The variance is returned broadcastable to ``x0``'s shape
    (shape ``(B, 1, ..., 1)`` or all ones).
    """
    _valid(schedule, t, first=0)
    _data(x0=x0)
    return torch.sqrt(_at(schedule.alpha_bars, t, x0)) * x0, _at(schedule.one_minus_alpha_bars, t, x0)


def q_sample(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: Timestep,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one shot: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    Eq. 4 (reparameterized as in Algorithm 1). t in 0..T; t = 0 returns x_0 (alpha_bar_0 = 1)."""
    _valid(schedule, t, first=0)
    _data(x0=x0)
    eps = _noise_like(x0, eps, generator)
    alpha_bar = _at(schedule.alpha_bars, t, x0)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, x0)
    return torch.sqrt(alpha_bar) * x0 + torch.sqrt(one_minus_alpha_bar) * eps


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: Timestep
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the forward-process posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I),
    Eqs. 6-7:

        mu_tilde_t  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                      + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

    t in 1..T. At t = 1 the posterior is a point mass at x_0: mean x_0, variance 0.
    The variance is returned broadcastable to ``x0``'s shape.
    """
    _valid(schedule, t)
    _data(x0=x0, xt=xt)
    mean = _at(schedule.posterior_mean_coef1, t, x0) * x0 + _at(schedule.posterior_mean_coef2, t, xt) * xt
    return mean, _at(schedule.beta_tildes, t, x0)


def mu_tilde_from_eps(schedule: NoiseSchedule, xt: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The posterior mean written with the noise, Eq. 10 (and the model mean of Eq. 11):
    mu_tilde_t = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)."""
    _valid(schedule, t)
    _data(xt=xt, eps=eps)
    beta = _at(schedule.betas, t, xt)
    alpha = _at(schedule.alphas, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - beta / torch.sqrt(one_minus_alpha_bar) * eps) / torch.sqrt(alpha)


def predict_x0_from_eps(schedule: NoiseSchedule, xt: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 4 for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (the x_0 used in Eq. 10)."""
    _valid(schedule, t)
    _data(xt=xt, eps=eps)
    alpha_bar = _at(schedule.alpha_bars, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - torch.sqrt(one_minus_alpha_bar) * eps) / torch.sqrt(alpha_bar)


def predict_eps_from_x0(schedule: NoiseSchedule, xt: torch.Tensor, x0: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 4 for the noise: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    _valid(schedule, t)
    _data(xt=xt, x0=x0)
    alpha_bar = _at(schedule.alpha_bars, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - torch.sqrt(alpha_bar) * x0) / torch.sqrt(one_minus_alpha_bar)


def score_from_eps(schedule: NoiseSchedule, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Score of q(x_t | x_0) (and, for the optimal predictor, of q(x_t)) from the noise:
    grad_{x_t} log q = -eps / sqrt(1 - alpha_bar_t) (Ho et al. 2020, Sec. 3.2, the link to score matching)."""
    _valid(schedule, t)
    _data(eps=eps)
    return -eps / torch.sqrt(_at(schedule.one_minus_alpha_bars, t, eps))


def eps_from_score(schedule: NoiseSchedule, score: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The inverse of :func:`score_from_eps`: eps = -sqrt(1 - alpha_bar_t) * score."""
    _valid(schedule, t)
    _data(score=score)
    return -torch.sqrt(_at(schedule.one_minus_alpha_bars, t, score)) * score


def v_from_x0_eps(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, Sec. 4).

    With x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, (x_t, v) is a rotation of (x_0, eps)."""
    _valid(schedule, t)
    _data(x0=x0, eps=eps)
    return torch.sqrt(_at(schedule.alpha_bars, t, x0)) * eps - torch.sqrt(_at(schedule.one_minus_alpha_bars, t, x0)) * x0


def x0_from_v(schedule: NoiseSchedule, xt: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (the inverse rotation)."""
    _valid(schedule, t)
    _data(xt=xt, v=v)
    return torch.sqrt(_at(schedule.alpha_bars, t, xt)) * xt - torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) * v


def eps_from_v(schedule: NoiseSchedule, xt: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v (the inverse rotation)."""
    _valid(schedule, t)
    _data(xt=xt, v=v)
    return torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) * xt + torch.sqrt(_at(schedule.alpha_bars, t, xt)) * v


def x0_from_mu(schedule: NoiseSchedule, xt: torch.Tensor, mu: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 7 for x_0: x_0 = (mu - posterior_mean_coef2 x_t) / posterior_mean_coef1.

    Well conditioned at small t; at large t coef1 ~ beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) is
    small, so errors in mu are amplified (the reason the mean is a poor thing for a network to predict)."""
    _valid(schedule, t)
    _data(xt=xt, mu=mu)
    return (mu - _at(schedule.posterior_mean_coef2, t, xt) * xt) / _at(schedule.posterior_mean_coef1, t, xt)


def eps_from_mu(schedule: NoiseSchedule, xt: torch.Tensor, mu: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 10 for the noise: eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t) / beta_t."""
    _valid(schedule, t)
    _data(xt=xt, mu=mu)
    alpha = _at(schedule.alphas, t, xt)
    beta = _at(schedule.betas, t, xt)
    return (xt - torch.sqrt(alpha) * mu) * torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) / beta



def mu_from_score(schedule: NoiseSchedule, xt: torch.Tensor, score: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The model mean from a predicted score: mu = (x_t + beta_t score) / sqrt(alpha_t) (Eq. 10 with
    eps = -sqrt(1 - alpha_bar_t) score)."""
    return mu_tilde_from_eps(schedule, xt, eps_from_score(schedule, score, t), t)


def mu_from_v(schedule: NoiseSchedule, xt: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The model mean from a predicted velocity v (Salimans & Ho 2022), through eps = sqrt(1 - alpha_bar) x_t +
    sqrt(alpha_bar) v and Eq. 10."""
    return mu_tilde_from_eps(schedule, xt, eps_from_v(schedule, xt, v, t), t)

# ---------------------------------------------------------------------------------------------
# The reverse process and samplers
# ---------------------------------------------------------------------------------------------
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A noise predictor eps_theta(x_t, t): x_t of shape (B, ...) and timesteps t (1..T) of shape (B,)."""

Variance = Literal["beta", "beta_tilde"]


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def p_mean_variance(schedule: NoiseSchedule, eps: torch.Tensor, xt: torch.Tensor, t: Timestep,
                    variance: Variance = "beta") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) from a predicted noise:
    mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (Eq. 11) and sigma_t^2 = beta_t or
    beta_tilde_t, the two fixed choices of Sec. 3.2."""
    _valid(schedule, t)
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    var = schedule.betas if variance == "beta" else schedule.beta_tildes
    return mu_tilde_from_eps(schedule, xt, eps, t), _at(var, t, xt)


def p_sample_step(schedule: NoiseSchedule, eps_model: EpsModel, xt: torch.Tensor, t: int,
                  variance: Variance = "beta", generator: torch.Generator | None = None,
                  clip_x0: bool = False) -> torch.Tensor:
    """One step of Algorithm 2: x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,
    with z ~ N(0, I), except at the last step t = 1 where z = 0. t in 1..T.

    ``clip_x0=True`` does what the official image code does (clip_denoised): the x_0 implied by eps_theta is
    clipped to [-1, 1] and the mean is the posterior mean mu_tilde(x_t, x_0) of Eq. 7 (identical when no clip)."""
    _valid(schedule, t)
    _data(xt=xt)
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    eps = eps_model(xt, _batch_t(t, xt))
    if clip_x0:
        x0 = predict_x0_from_eps(schedule, xt, eps, t).clamp(-1.0, 1.0)
        mean, _ = q_posterior(schedule, x0, xt, t)
        var = _at(schedule.betas if variance == "beta" else schedule.beta_tildes, t, xt)
    else:
        mean, var = p_mean_variance(schedule, eps, xt, t, variance)
    if t == 1:
        return mean
    z = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
    return mean + torch.sqrt(var) * z


@torch.no_grad()
def sample_ancestral(schedule: NoiseSchedule, eps_model: EpsModel, shape: tuple[int, ...],
                     variance: Variance = "beta", generator: torch.Generator | None = None,
                     record: bool = False, progress: bool = False, x_T: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float64, clip_x0: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm 2: x_T ~ N(0, I), then for t = T, ..., 1 a reverse step. Returns x_0, or (x_0, trajectory) with
    ``record=True`` where trajectory[i] is the paper's x_{T-i} (trajectory[0] = x_T, trajectory[-1] = x_0)."""
    if x_T is None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    x = torch.randn(shape, generator=generator, dtype=dtype) if x_T is None else x_T
    _data(x_T=x)
    return sample_ancestral_from(schedule, eps_model, x, schedule.T, variance, generator, record, progress, clip_x0)


@torch.no_grad()
def sample_ancestral_from(schedule: NoiseSchedule, eps_model: EpsModel, x_t: torch.Tensor, t: int,
                          variance: Variance = "beta", generator: torch.Generator | None = None,
                          record: bool = False, progress: bool = False, clip_x0: bool = False
                          ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm 2's reverse steps from a given x_t at step t (1..T) down to x_0: for s = t, ..., 1 a reverse step
    (:func:`p_sample_step`; no noise at s = 1). Returns x_0, or (x_0, trajectory) with ``record=True`` where
    trajectory[i] is the paper's x_{t-i} (trajectory[0] = x_t, trajectory[-1] = x_0). Started at t = T from
    x_T ~ N(0, I) it is :func:`sample_ancestral` (same generator, same draws).

    This is the decoder of Ho et al. (2020), Sec. 4.4 (Fig. 8): encode x_0 stochastically with q(x_t | x_0) at an
    intermediate t (500 of T = 1000), interpolate the latents, and decode with the reverse process from t."""
    t_checked = check_t(t, schedule.T)  # numpy and 0-d torch integers accepted
    if t_checked.ndim != 0:
        raise ValueError(f"t must be one timestep for the whole batch, got shape {tuple(t_checked.shape)}")
    t = int(t_checked)
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    _data(x_t=x_t)
    if x_t.ndim < 1:
        raise ValueError(f"x_t must have a batch dimension, got shape {tuple(x_t.shape)}")
    if not bool(torch.isfinite(x_t).all()):
        raise ValueError("x_t must be finite, got NaN or infinite entries")
    x = x_t
    trajectory = [x] if record else []
    for s in tqdm(range(t, 0, -1), disable=not progress, desc="sampling", leave=False):
        x = p_sample_step(schedule, eps_model, x, s, variance, generator, clip_x0)
        if record:
            trajectory.append(x)
    return (x, trajectory) if record else x


def ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """An increasing, evenly strided subset tau of the timesteps 1..T with ``num_steps`` elements, starting at
    1 and ending at T (Song et al. 2021, Sec. 4.2); ``num_steps = 1`` gives [T]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ValueError(f"num_steps must be an integer in [1, {T}], got {num_steps!r}")
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if num_steps == 1:
        return [T]
    return sorted({1 + round(i * (T - 1) / (num_steps - 1)) for i in range(num_steps)})


def _check_pair(schedule: NoiseSchedule, t: int, t_prev: int) -> tuple[int, int]:
    """(t, t_prev) as Python ints (numpy and 0-d torch integers accepted), checked: 0 <= t_prev < t <= T."""
    try:
        if isinstance(t, bool) or isinstance(t_prev, bool):
            raise TypeError
        t, t_prev = operator.index(t), operator.index(t_prev)
    except TypeError:
        raise ValueError(f"t and t_prev must be integers, got t={t!r}, t_prev={t_prev!r}") from None
    if not 0 <= t_prev < t <= schedule.T:
        raise ValueError(f"need integers 0 <= t_prev < t <= {schedule.T}, got t={t!r}, t_prev={t_prev!r}")
    return t, t_prev


def ddim_sigma(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (Song et al. 2021, Eq. 16), for 0 <= t_prev < t <= T (t_prev = 0: the step to x_0, alpha_bar_0 = 1);
    eta = 1 with t_prev = t - 1 is the DDPM posterior std sqrt(beta_tilde_t)."""
    t, t_prev = _check_pair(schedule, t, t_prev)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta < math.inf:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    omab = schedule.one_minus_alpha_bars[t].item()
    omab_prev = schedule.one_minus_alpha_bars[t_prev].item()
    # 1 - alpha_bar_t / alpha_bar_prev = -expm1(log alpha_bar_t - log alpha_bar_prev): no cancellation at small t
    log_ratio = schedule.log_alpha_bars[t].item() - schedule.log_alpha_bars[t_prev].item()
    return eta * (omab_prev / omab) ** 0.5 * max(-math.expm1(log_ratio), 0.0) ** 0.5


def ddim_step(schedule: NoiseSchedule, eps: torch.Tensor, xt: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
              generator: torch.Generator | None = None, clip_x0: bool = False) -> torch.Tensor:
    """One generalized DDIM step from t to t_prev, 0 <= t_prev < t <= T (t_prev = 0: to x_0), Song et al. (2021),
    Eq. 12: x_prev = sqrt(alpha_bar_prev) x0_pred + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z.
    ``clip_x0`` clips x0_pred to [-1, 1] and uses the eps consistent with it (for image data)."""
    t, t_prev = _check_pair(schedule, t, t_prev)
    x0_pred = predict_x0_from_eps(schedule, xt, eps, t)
    if clip_x0:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = predict_eps_from_x0(schedule, xt, x0_pred, t)
    ab_prev = schedule.alpha_bars[t_prev].item()
    omab_prev = schedule.one_minus_alpha_bars[t_prev].item()
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    out = ab_prev**0.5 * x0_pred + max(omab_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        out = out + sigma * torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
    return out


def _check_timesteps(schedule: NoiseSchedule, timesteps: list[int]) -> list[int]:
    try:  # integers only (numpy and 0-d torch integers too): int(2.5) would truncate silently
        if any(isinstance(t, bool) for t in timesteps):
            raise TypeError
        steps = [operator.index(t) for t in timesteps]
    except TypeError:
        raise ValueError(f"timesteps must be integers in [1, {schedule.T}], got {list(timesteps)}") from None
    if not steps or steps[0] < 1 or steps[-1] > schedule.T or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be a non-empty increasing list in [1, {schedule.T}], got {list(timesteps)}")
    return steps


@torch.no_grad()
def sample_ddim(schedule: NoiseSchedule, eps_model: EpsModel, x_T: torch.Tensor, timesteps: list[int],
                eta: float = 0.0, generator: torch.Generator | None = None, record: bool = False,
                progress: bool = False, clip_x0: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """DDIM sampling along the increasing timesteps ``timesteps`` in 1..T (e.g. :func:`ddim_timesteps`), from x_T at
    t = timesteps[-1] down to x_0 (t = 0). eta = 0 is deterministic; eta = 1 on all T steps is ancestral sampling
    with sigma_t^2 = beta_tilde_t."""
    _data(x_T=x_T)
    x = x_T
    trajectory = [x] if record else []
    steps = _check_timesteps(schedule, timesteps)
    for t, t_prev in tqdm(list(zip(steps[::-1], steps[::-1][1:] + [0])), disable=not progress, desc="DDIM", leave=False):
        x = ddim_step(schedule, eps_model(x, _batch_t(t, x)), x, t, t_prev, eta, generator, clip_x0)
        if record:
            trajectory.append(x)
    return (x, trajectory) if record else x


@torch.no_grad()
def ddim_invert(schedule: NoiseSchedule, eps_model: EpsModel, x0: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """Deterministic DDIM encoding x_0 -> x_T: run the eta = 0 update forward in time,
    x_next = sqrt(alpha_bar_next) x0_pred + sqrt(1 - alpha_bar_next) eps_theta(x, t), evaluating the model at the
    current point (Song et al. 2021, Sec. 4.3: the probability-flow ODE discretized the other way). Inverting then
    sampling along the same timesteps returns x_0 up to the discretization error."""
    _data(x0=x0)
    x = x0
    steps = [0] + _check_timesteps(schedule, timesteps)
    for t, t_next in zip(steps[:-1], steps[1:]):
        if t == 0:  # from x_0 to the first step: x0_pred is x_0 itself, eps is evaluated there
            eps = eps_model(x, _batch_t(t_next, x))
            x0_pred = x
        else:
            eps = eps_model(x, _batch_t(t, x))
            x0_pred = predict_x0_from_eps(schedule, x, eps, t)
        ab_next = schedule.alpha_bars[t_next].item()
        omab_next = schedule.one_minus_alpha_bars[t_next].item()
        x = ab_next**0.5 * x0_pred + omab_next**0.5 * eps
    return x
