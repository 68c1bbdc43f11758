"""The variational bound of a diffusion model, term by term, and its Monte Carlo estimators.

Ho et al. (2020), Eq. 5: with L = E_q[-log p_theta(x_0:T) + log q(x_1:T | x_0)] >= -log p_theta(x_0),

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || p(x_T)),                               p(x_T) = N(0, I)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),
    L_0     = E_q [-log p_theta(x_0 | x_1)].

All quantities are in nats and summed over every dimension but the batch (use :func:`bits_per_dim`).
Code index t = paper's t + 1, so the term at code index t >= 1 is the paper's L_t
(= KL at paper step t + 1), code index 0 is the decoder term L_0, and the sum has T + 1 terms.

A reverse model is any callable ``model(x_t, t) -> (mean, logvar)`` giving p_theta(x_{t-1} | x_t) =
N(mean, exp(logvar)) at code index t (a 1-D tensor of timesteps, one per example); at t = 0 the same
Gaussian is the continuous decoder p_theta(x_0 | x_1) (the discrete decoder of Eq. 13 comes with bits/dim).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .diffusion import q_mean_variance, q_posterior, q_sample
from .gaussians import discretized_log_normal, log_normal, normal_kl
from .schedules import NoiseSchedule, check_t

__all__ = [
    "ReverseModel",
    "prior_term",
    "kl_term",
    "decoder_nll",
    "decoder_nll_discrete",
    "term_at",
    "vlb_terms",
    "vlb_single_t",
    "vlb_importance",
    "bits_per_dim",
]

ReverseModel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1) if x.ndim > 1 else x


def prior_term(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, shape (B,). No parameters: a constant (Sec. 3.1)."""
    mean, var = q_mean_variance(schedule, x0, schedule.T - 1)
    zero = torch.zeros_like(x0)
    return _sum_dims(normal_kl(mean, torch.log(var).expand_as(x0), zero, zero))


def kl_term(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
            mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_{t-1} for one draw of x_t: KL(q(x_{t-1} | x_t, x_0) || N(mean, exp(logvar))) per example, shape (B,),
    at code indices t >= 1 (Eq. 5; the KL of two Gaussians in closed form)."""
    t = check_t(t, schedule.T)
    if (t < 1).any():
        raise ValueError("kl_term needs code index t >= 1; the term at t = 0 is the decoder (decoder_nll)")
    mu_tilde, _ = q_posterior(schedule, x0, xt, t)
    log_beta_tilde = torch.log(schedule.beta_tildes.to(x0)[t]).reshape((-1,) + (1,) * (x0.ndim - 1))
    return _sum_dims(normal_kl(mu_tilde, log_beta_tilde.expand_as(x0), mean, logvar.expand_as(x0)))


def decoder_nll(x0: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_0 for one draw of x_1 with a continuous Gaussian decoder: -log N(x_0; mean, exp(logvar)), shape (B,)."""
    return -_sum_dims(log_normal(x0, mean, logvar.expand_as(x0)))


def decoder_nll_discrete(x0: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_0 for one draw of x_1 with the discretized Gaussian decoder of Eq. 13 (x_0 on the 256-level grid of
    [-1, 1]): -log P(x_0), a probability, so the bound is on the NLL of discrete data. Shape (B,)."""
    return -_sum_dims(discretized_log_normal(x0, mean, logvar.expand_as(x0)))


def term_at(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor, t: torch.Tensor | int,
            generator: torch.Generator | None = None, eps: torch.Tensor | None = None,
            decoder: str = "continuous") -> torch.Tensor:
    """One-sample estimate of the term at code index t (per example): x_t ~ q(x_t | x_0) (with the given
    noise ``eps`` if passed), then L_0 at t = 0 (``decoder``: "continuous" Gaussian or "discrete", Eq. 13)
    and L_{t-1} (the KL) at t >= 1. Shape (B,)."""
    if decoder not in ("continuous", "discrete"):
        raise ValueError(f"decoder must be 'continuous' or 'discrete', got {decoder!r}")
    t = check_t(t, schedule.T).expand(x0.shape[0]) if torch.as_tensor(t).ndim == 0 else check_t(t, schedule.T)
    xt = q_sample(schedule, x0, t, eps=eps, generator=generator)
    mean, logvar = model(xt, t)
    nll = (decoder_nll if decoder == "continuous" else decoder_nll_discrete)(x0, mean, logvar)
    is_kl = t >= 1
    kl = kl_term(schedule, x0[is_kl], xt[is_kl], t[is_kl], mean[is_kl], logvar.expand_as(x0)[is_kl])
    out = nll.clone()
    out[is_kl] = kl
    return out


def vlb_terms(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor,
              generator: torch.Generator | None = None, decoder: str = "continuous") -> torch.Tensor:
    """Every term of Eq. 5 for each example, shape (B, T + 1): column 0 is L_0 (``decoder`` "continuous" or
    "discrete", Eq. 13), column t (1 <= t <= T - 1) is the KL at code index t, column T is L_T. ``.sum(1)`` is the
    full-sum estimate of the bound; each column draws its own x_t (T model calls)."""
    B = x0.shape[0]
    cols = [term_at(schedule, model, x0, torch.full((B,), t, dtype=torch.long), generator, decoder=decoder)
            for t in range(schedule.T)]
    return torch.stack(cols + [prior_term(schedule, x0)], dim=1)


def vlb_single_t(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor,
                 generator: torch.Generator | None = None, decoder: str = "continuous",
                 return_t: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The unbiased one-term estimate T * L_t + L_T with t ~ Uniform{0..T-1} per example, shape (B,)
    (the estimator behind Algorithm 1's uniform t): its mean is the full sum, one model call.
    ``return_t=True`` also returns the drawn code indices (to check the estimate conditionally on t)."""
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)
    est = schedule.T * term_at(schedule, model, x0, t, generator, decoder=decoder) + prior_term(schedule, x0)
    return (est, t) if return_t else est


def vlb_importance(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor, probs: torch.Tensor,
                   generator: torch.Generator | None = None, decoder: str = "continuous") -> torch.Tensor:
    """Importance-sampled one-term estimate L_t / p(t) + L_T with t ~ p (Nichol & Dhariwal 2021, Eq. 18,
    where p(t) is proportional to sqrt(E[L_t^2])). Unbiased for any p with p(t) > 0 everywhere. Shape (B,)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if probs.shape != (schedule.T,) or (probs <= 0).any() or abs(probs.sum().item() - 1) > 1e-9:
        raise ValueError(f"probs must be {schedule.T} positive numbers summing to 1")
    t = torch.multinomial(probs, x0.shape[0], replacement=True, generator=generator)
    return term_at(schedule, model, x0, t, generator, decoder=decoder) / probs[t].to(x0) + prior_term(schedule, x0)


def bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """Convert a per-example negative log-likelihood (bound) in nats to bits per dimension."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return torch.as_tensor(nats) / (num_dims * math.log(2.0))
