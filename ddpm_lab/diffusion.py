"""The forward process, its Bayes posterior, and conversions between parameterizations.

Equation numbers are those of Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models".
Every function takes the :class:`~ddpm_lab.schedules.NoiseSchedule` first, then tensors whose first
dimension is the batch, then ``t``: an int (the same timestep for the whole batch) or a 1-D tensor of
per-example timesteps, indexed 0..T-1 (code index t is the paper's timestep t + 1).
Coefficients are computed in float64 and cast to the dtype of the data they multiply.
"""

from __future__ import annotations

import torch

from .schedules import NoiseSchedule, extract

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
]

Timestep = int | torch.Tensor


def _at(coef: torch.Tensor, t: Timestep, x: torch.Tensor) -> torch.Tensor:
    """``coef[t]`` shaped to broadcast against ``x``, in ``x``'s dtype and on its device."""
    return extract(coef, t, x.shape).to(dtype=x.dtype, device=x.device)


def _noise_like(x: torch.Tensor, eps: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if eps is None:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if eps.shape != x.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x has shape {tuple(x.shape)}")
    return eps


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def q_step(
    schedule: NoiseSchedule,
    x_prev: torch.Tensor,
    t: Timestep,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), Eq. 2.

    ``x_prev`` is x_{t-1}; code index ``t`` uses ``betas[t]``. ``eps`` (standard normal, same shape)
    may be passed to make the step a deterministic function of it.
    """
    eps = _noise_like(x_prev, eps, generator)
    beta_t = _at(schedule.betas, t, x_prev)
    return torch.sqrt(1.0 - beta_t) * x_prev + torch.sqrt(beta_t) * eps


def q_mean_variance(schedule: NoiseSchedule, x0: torch.Tensor, t: Timestep) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Eq. 4.

    The variance is returned broadcastable to ``x0``'s shape (shape ``(B, 1, ..., 1)`` or all ones).
    """
    return torch.sqrt(_at(schedule.alpha_bars, t, x0)) * x0, _at(schedule.one_minus_alpha_bars, t, x0)


def q_sample(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: Timestep,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one shot: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    Eq. 4 (reparameterized as in Algorithm 1)."""
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

    At code index 0 (paper t = 1) the posterior is a point mass at x_0: mean x_0, variance 0.
    The variance is returned broadcastable to ``x0``'s shape.
    """
    _same_shape(x0, xt, "x0 and xt")
    mean = _at(schedule.posterior_mean_coef1, t, x0) * x0 + _at(schedule.posterior_mean_coef2, t, xt) * xt
    return mean, _at(schedule.beta_tildes, t, x0)


def mu_tilde_from_eps(schedule: NoiseSchedule, xt: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The posterior mean written with the noise, Eq. 10 (and the model mean of Eq. 11):
    mu_tilde_t = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)."""
    _same_shape(xt, eps, "xt and eps")
    beta = _at(schedule.betas, t, xt)
    alpha = _at(schedule.alphas, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - beta / torch.sqrt(one_minus_alpha_bar) * eps) / torch.sqrt(alpha)


def predict_x0_from_eps(schedule: NoiseSchedule, xt: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 4 for x_0: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (the x_0 used in Eq. 10)."""
    _same_shape(xt, eps, "xt and eps")
    alpha_bar = _at(schedule.alpha_bars, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - torch.sqrt(one_minus_alpha_bar) * eps) / torch.sqrt(alpha_bar)


def predict_eps_from_x0(schedule: NoiseSchedule, xt: torch.Tensor, x0: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 4 for the noise: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    _same_shape(xt, x0, "xt and x0")
    alpha_bar = _at(schedule.alpha_bars, t, xt)
    one_minus_alpha_bar = _at(schedule.one_minus_alpha_bars, t, xt)
    return (xt - torch.sqrt(alpha_bar) * x0) / torch.sqrt(one_minus_alpha_bar)


def score_from_eps(schedule: NoiseSchedule, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Score of q(x_t | x_0) (and, for the optimal predictor, of q(x_t)) from the noise:
    grad_{x_t} log q = -eps / sqrt(1 - alpha_bar_t) (Ho et al. 2020, Sec. 3.2, the link to score matching)."""
    return -eps / torch.sqrt(_at(schedule.one_minus_alpha_bars, t, eps))


def eps_from_score(schedule: NoiseSchedule, score: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The inverse of :func:`score_from_eps`: eps = -sqrt(1 - alpha_bar_t) * score."""
    return -torch.sqrt(_at(schedule.one_minus_alpha_bars, t, score)) * score


def v_from_x0_eps(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, Sec. 4).

    With x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, (x_t, v) is a rotation of (x_0, eps)."""
    _same_shape(x0, eps, "x0 and eps")
    return torch.sqrt(_at(schedule.alpha_bars, t, x0)) * eps - torch.sqrt(_at(schedule.one_minus_alpha_bars, t, x0)) * x0


def x0_from_v(schedule: NoiseSchedule, xt: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v (the inverse rotation)."""
    _same_shape(xt, v, "xt and v")
    return torch.sqrt(_at(schedule.alpha_bars, t, xt)) * xt - torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) * v


def eps_from_v(schedule: NoiseSchedule, xt: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v (the inverse rotation)."""
    _same_shape(xt, v, "xt and v")
    return torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) * xt + torch.sqrt(_at(schedule.alpha_bars, t, xt)) * v


def x0_from_mu(schedule: NoiseSchedule, xt: torch.Tensor, mu: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 7 for x_0: x_0 = (mu - posterior_mean_coef2 x_t) / posterior_mean_coef1.

    Well conditioned at small t; at large t coef1 ~ beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) is
    small, so errors in mu are amplified (the reason the mean is a poor thing for a network to predict)."""
    _same_shape(xt, mu, "xt and mu")
    return (mu - _at(schedule.posterior_mean_coef2, t, xt) * xt) / _at(schedule.posterior_mean_coef1, t, xt)


def eps_from_mu(schedule: NoiseSchedule, xt: torch.Tensor, mu: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Invert Eq. 10 for the noise: eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t) / beta_t."""
    _same_shape(xt, mu, "xt and mu")
    alpha = _at(schedule.alphas, t, xt)
    beta = _at(schedule.betas, t, xt)
    return (xt - torch.sqrt(alpha) * mu) * torch.sqrt(_at(schedule.one_minus_alpha_bars, t, xt)) / beta
