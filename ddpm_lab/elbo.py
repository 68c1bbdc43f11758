"""The variational bound of a diffusion model, term by term, and its Monte Carlo estimators.

Ho et al. (2020), Eq. 5: with L = E_q[-log p_theta(x_0:T) + log q(x_1:T | x_0)] >= -log p_theta(x_0),

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || p(x_T)),                               p(x_T) = N(0, I)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),
    L_0     = E_q [-log p_theta(x_0 | x_1)].

All quantities are in nats and summed over every dimension but the batch (use :func:`bits_per_dim`).
Timesteps are the paper's: the model step at t (1..T) produces the term L_{t-1}, so t = 1 gives the decoder
term L_0, t >= 2 the KL L_{t-1}, and with L_T the sum has T + 1 terms L_0..L_T.

A reverse model is any callable ``model(x_t, t) -> (mean, logvar)`` giving p_theta(x_{t-1} | x_t) =
N(mean, exp(logvar)) at timesteps t (a 1-D tensor, one per example); at t = 1 the same Gaussian is the
continuous decoder p_theta(x_0 | x_1) (the discrete decoder of Eq. 13 comes with bits/dim).
"""

from __future__ import annotations

import math
import numbers
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


def _check_finite(name: str, x: torch.Tensor) -> None:
    """ValueError if a CPU tensor holds NaN or inf (skipped on accelerators, where reading it would sync)."""
    if x.device.type == "cpu" and not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {x[~torch.isfinite(x)].flatten()[0].item()}")


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1) if x.ndim > 1 else x


def prior_term(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, shape (B,). No parameters: a constant (Sec. 3.1)."""
    _check_finite("x0", x0)
    mean, var = q_mean_variance(schedule, x0, schedule.T)
    zero = torch.zeros_like(x0)
    return _sum_dims(normal_kl(mean, torch.log(var).expand_as(x0), zero, zero))


def kl_term(schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
            mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L_{t-1} for one draw of x_t: KL(q(x_{t-1} | x_t, x_0) || N(mean, exp(logvar))) per example, shape (B,),
    at timesteps 2 <= t <= T (Eq. 5; the KL of two Gaussians in closed form). At t = 1 the term is the decoder
    L_0 (:func:`decoder_nll`), where beta_tilde_1 = 0."""
    t = check_t(t, schedule.T, first=2)
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
    """One-sample estimate of the term produced at timestep t in 1..T (per example): x_t ~ q(x_t | x_0) (with the
    given noise ``eps`` if passed), then L_0 at t = 1 (``decoder``: "continuous" Gaussian or "discrete", Eq. 13)
    and L_{t-1} (the KL) at t >= 2. Shape (B,)."""
    if decoder not in ("continuous", "discrete"):
        raise ValueError(f"decoder must be 'continuous' or 'discrete', got {decoder!r}")
    _check_finite("x0", x0)
    t = check_t(t, schedule.T).expand(x0.shape[0]) if torch.as_tensor(t).ndim == 0 else check_t(t, schedule.T)
    xt = q_sample(schedule, x0, t, eps=eps, generator=generator)
    mean, logvar = model(xt, t)
    nll = (decoder_nll if decoder == "continuous" else decoder_nll_discrete)(x0, mean, logvar)
    is_kl = t >= 2
    kl = kl_term(schedule, x0[is_kl], xt[is_kl], t[is_kl], mean[is_kl], logvar.expand_as(x0)[is_kl])
    out = nll.clone()
    out[is_kl] = kl
    return out


def vlb_terms(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor,
              generator: torch.Generator | None = None, decoder: str = "continuous") -> torch.Tensor:
    """Every term of Eq. 5 for each example, shape (B, T + 1): column j is L_j. Column 0 is L_0 (the decoder at
    t = 1, ``decoder`` "continuous" or "discrete", Eq. 13), column j (1 <= j <= T - 1) is the KL L_j made at
    t = j + 1, column T is L_T. ``.sum(1)`` is the full-sum estimate of the bound; each column draws its own
    x_t (T model calls, t = 1..T)."""
    B = x0.shape[0]
    cols = [term_at(schedule, model, x0, torch.full((B,), t, dtype=torch.long), generator, decoder=decoder)
            for t in range(1, schedule.T + 1)]
    return torch.stack(cols + [prior_term(schedule, x0)], dim=1)


def vlb_single_t(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor,
                 generator: torch.Generator | None = None, decoder: str = "continuous",
                 return_t: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The unbiased one-term estimate T * L_{t-1} + L_T with t ~ Uniform{1..T} per example, shape (B,)
    (the estimator behind Algorithm 1's uniform t): its mean is the full sum, one model call.
    ``return_t=True`` also returns the drawn timesteps (to check the estimate conditionally on t)."""
    t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator)
    est = schedule.T * term_at(schedule, model, x0, t, generator, decoder=decoder) + prior_term(schedule, x0)
    return (est, t) if return_t else est


def vlb_importance(schedule: NoiseSchedule, model: ReverseModel, x0: torch.Tensor, probs: torch.Tensor,
                   generator: torch.Generator | None = None, decoder: str = "continuous") -> torch.Tensor:
    """Importance-sampled one-term estimate L_{t-1} / p(t) + L_T with t ~ p (Nichol & Dhariwal 2021, Eq. 18,
    where p(t) is proportional to sqrt(E[L_{t-1}^2])). ``probs`` is indexed by t: length T + 1, probs[0] = 0
    (t = 0 makes no term) and probs[1..T] > 0 summing to 1. Unbiased for any such p. Shape (B,)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    T = schedule.T
    if probs.shape != (T + 1,):
        raise ValueError(f"probs must have length T + 1 = {T + 1} (indexed by t, probs[0] = 0), got shape "
                         f"{tuple(probs.shape)}")
    if probs[0] != 0 or not (probs[1:] > 0).all() or abs(probs.sum().item() - 1) > 1e-9:
        raise ValueError(f"probs must have probs[0] = 0 and probs[1..{T}] positive, summing to 1; got probs[0] = "
                         f"{probs[0].item()}, min over t >= 1 = {probs[1:].min().item()}, sum = {probs.sum().item()}")
    B = x0.shape[0]  # multinomial refuses 0 draws: an empty batch gives an empty estimate
    t = torch.multinomial(probs, B, replacement=True, generator=generator) if B else torch.zeros(0, dtype=torch.long)
    return term_at(schedule, model, x0, t, generator, decoder=decoder) / probs[t].to(x0) + prior_term(schedule, x0)


def bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """Convert a per-example negative log-likelihood (bound) in nats to bits per dimension: nats / (D log 2).
    ``num_dims`` D is an integer >= 1; NaN nats raise a ValueError (checked on CPU tensors and floats)."""
    if isinstance(num_dims, bool) or not isinstance(num_dims, numbers.Integral) or num_dims < 1:
        raise ValueError(f"num_dims must be an integer >= 1, got {num_dims!r}")
    nats = torch.as_tensor(nats)
    if nats.device.type == "cpu" and torch.isnan(nats).any():
        raise ValueError("nats must not be NaN (a NaN bound is a failed computation, not a number of bits)")
    return nats / (num_dims * math.log(2.0))
