"""Noise schedules and the per-timestep coefficients of the forward process.

Index convention (the one thing to remember): the paper numbers timesteps 1..T; code indexes them
0..T-1, so ``betas[t]`` is the paper's beta_{t+1}, and ``alpha_bars_prev[0] = 1`` stands for
alpha_bar_0 (no noise at all, x_0 itself). Every coefficient is computed once, in float64, and
read through :func:`extract`, which casts it to the caller's dtype (float32 for models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

__all__ = ["linear_betas", "cosine_betas", "NoiseSchedule", "extract", "check_t"]


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """Linearly increasing variances beta_1..beta_T, Ho et al. (2020), Sec. 4 (1e-4 to 0.02, T = 1000)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), Eq. 17:
    alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2,
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at ``max_beta`` (their Sec. 3.2)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Every per-timestep quantity of the forward process, computed once in float64 from ``betas``.

    Attributes (all shape ``(T,)``, index t = paper's t + 1):
      betas            beta_t, variance of q(x_t | x_{t-1}), Eq. 2
      alphas           alpha_t = 1 - beta_t
      alpha_bars       alpha_bar_t = prod_{s <= t} alpha_s, Eq. 4
      log_alpha_bars   log alpha_bar_t = sum_{s <= t} log(1 - beta_s), for ratios of alpha_bars at full precision
      alpha_bars_prev  alpha_bar_{t-1}, with alpha_bar_0 = 1
      one_minus_alpha_bars, one_minus_alpha_bars_prev  1 - alpha_bar_t and 1 - alpha_bar_{t-1}, to full
                       relative precision (use these, not 1 - alpha_bars)
      beta_tildes      posterior variance (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, Eq. 7
      posterior_log_variance_clipped  log beta_tilde_t, with index 0 (where beta_tilde = 0) set to
                       index 1's value so the log is finite (as in improved-diffusion)
      posterior_mean_coef1  sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), multiplies x_0 in Eq. 7
      posterior_mean_coef2  sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), multiplies x_t
      snr              signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021)
    """

    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alpha_bars: torch.Tensor = field(init=False)
    log_alpha_bars: torch.Tensor = field(init=False)
    alpha_bars_prev: torch.Tensor = field(init=False)
    one_minus_alpha_bars: torch.Tensor = field(init=False)
    one_minus_alpha_bars_prev: torch.Tensor = field(init=False)
    beta_tildes: torch.Tensor = field(init=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)
    snr: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        bad = ~((betas > 0) & (betas < 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"betas must lie in (0, 1), got betas[{i}] = {betas[i].item()}")
        alphas = 1.0 - betas
        # alpha_bar_t = prod_s (1 - beta_s) = exp(sum_s log1p(-beta_s)). 1 - alpha_bar_t is taken as
        # -expm1(...) rather than subtracted from 1: at t = 1 it is ~1e-4, and 1 - cumprod would lose
        # four of float64's sixteen digits there (every coefficient below divides by it).
        log_alpha_bars = torch.cumsum(torch.log1p(-betas), dim=0)
        alpha_bars = torch.exp(log_alpha_bars)
        one_minus_alpha_bars = -torch.expm1(log_alpha_bars)
        zero = torch.zeros(1, dtype=torch.float64)
        alpha_bars_prev = torch.cat([zero + 1.0, alpha_bars[:-1]])
        one_minus_alpha_bars_prev = torch.cat([zero, one_minus_alpha_bars[:-1]])
        beta_tildes = one_minus_alpha_bars_prev / one_minus_alpha_bars * betas
        # beta_tilde at index 0 is exactly 0 (x_0 is known given x_0): clip the log to index 1's value.
        log_var = torch.log(torch.cat([beta_tildes[1:2], beta_tildes[1:]]) if len(betas) > 1 else betas)
        values = dict(
            betas=betas,
            alphas=alphas,
            alpha_bars=alpha_bars,
            log_alpha_bars=log_alpha_bars,
            alpha_bars_prev=alpha_bars_prev,
            one_minus_alpha_bars=one_minus_alpha_bars,
            one_minus_alpha_bars_prev=one_minus_alpha_bars_prev,
            beta_tildes=beta_tildes,
            posterior_log_variance_clipped=log_var,
            posterior_mean_coef1=alpha_bars_prev.sqrt() * betas / one_minus_alpha_bars,
            posterior_mean_coef2=alphas.sqrt() * one_minus_alpha_bars_prev / one_minus_alpha_bars,
            snr=alpha_bars / one_minus_alpha_bars,
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # Constructors -----------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> "NoiseSchedule":
        """The schedule of Ho et al. (2020): betas linear from 1e-4 to 0.02 over T = 1000 steps."""
        return cls(linear_betas(T, beta_1, beta_T))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> "NoiseSchedule":
        """The cosine schedule of Nichol & Dhariwal (2021), Eq. 17."""
        return cls(cosine_betas(T, s))

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> "NoiseSchedule":
        """``"linear"`` or ``"cosine"`` with default parameters."""
        if name == "linear":
            return cls.linear(T)
        if name == "cosine":
            return cls.cosine(T)
        raise ValueError(f"unknown schedule {name!r}; choose one of ['cosine', 'linear']")

    # Coefficients -----------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def to(self, device: str | torch.device) -> "NoiseSchedule":
        """The same schedule with every coefficient (still float64) on ``device``, so that reading them in a
        training step copies nothing from the host."""
        moved = object.__new__(NoiseSchedule)
        for f in fields(self):
            object.__setattr__(moved, f.name, getattr(self, f.name).to(device))
        return moved

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule(T={self.T}, beta_1={b[0].item():.3g}, beta_T={b[-1].item():.3g})"


def check_t(t: int | torch.Tensor, T: int) -> torch.Tensor:
    """Return ``t`` as an int64 tensor, raising ``ValueError`` (naming the value) unless 0 <= t <= T - 1."""
    if isinstance(t, bool) or (isinstance(t, float)):
        raise ValueError(f"t must be an integer timestep in [0, {T - 1}], got {t!r}")
    t_tensor = torch.as_tensor(t)
    if t_tensor.dtype.is_floating_point or t_tensor.dtype == torch.bool:
        raise ValueError(f"t must be an integer timestep in [0, {T - 1}], got dtype {t_tensor.dtype}")
    t_tensor = t_tensor.long()
    if t_tensor.ndim > 1:
        raise ValueError(f"t must be a scalar or a 1-D batch of timesteps, got shape {tuple(t_tensor.shape)}")
    # The range check reads values on the host; for an accelerator tensor that would force a sync
    # in every training step, so it is skipped there (out-of-range indexing fails on the device).
    if t_tensor.device.type == "cpu" and t_tensor.numel() and (t_tensor.min() < 0 or t_tensor.max() > T - 1):
        bad = t_tensor[(t_tensor < 0) | (t_tensor > T - 1)].flatten()[0].item()
        raise ValueError(f"t must be in [0, {T - 1}], got {bad}")
    return t_tensor


def extract(coef: torch.Tensor, t: int | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Read ``coef[t]`` and shape it to broadcast against a batch of shape ``shape``.

    ``t`` is a scalar (one timestep for the whole batch; the result has shape ``(1,) * len(shape)``)
    or a 1-D tensor of length ``shape[0]`` (one timestep per example; the result has shape
    ``(B, 1, ..., 1)``). The result keeps ``coef``'s dtype and lives on ``t``'s device.
    This is improved-diffusion's ``_extract_into_tensor``.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("shape must have at least one dimension (the batch)")
    t_tensor = check_t(t, coef.shape[0])
    device = t.device if isinstance(t, torch.Tensor) else coef.device
    if t_tensor.ndim == 0:
        return coef.to(device)[t_tensor.to(device)].reshape((1,) * len(shape))
    if t_tensor.shape[0] != shape[0]:
        raise ValueError(f"t has {t_tensor.shape[0]} timesteps but the batch has {shape[0]} examples (shape {shape})")
    out = coef.to(device)[t_tensor.to(device)]
    return out.reshape((shape[0],) + (1,) * (len(shape) - 1))
