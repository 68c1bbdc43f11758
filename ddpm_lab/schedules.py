"""Noise schedules and the per-timestep coefficients of the forward process.

Timesteps are the paper's: t runs 1..T, and every per-timestep array has length T + 1 with ``arr[t]``
the quantity at step t (so ``alpha_bars[t - 1]`` is alpha_bar_{t-1}). Index 0 holds the value at t = 0
where the paper defines one (alpha_bar_0 = 1, 1 - alpha_bar_0 = 0, log alpha_bar_0 = 0, SNR_0 = inf)
and NaN where it does not (beta_0, alpha_0, beta_tilde_0, the posterior coefficients at 0), so reading
it by accident poisons the result; every function also checks its t range. Every coefficient is
computed once, in float64, and read through :func:`extract`, which casts it to the caller's dtype.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

__all__ = ["linear_betas", "cosine_betas", "NoiseSchedule", "extract", "check_t", "vp_beta", "vp_log_alpha_bar",
           "vp_alpha_bar", "VP_BETA_MIN", "VP_BETA_MAX"]


def _check_T(T: int) -> int:
    """``T`` as an int, or a ValueError naming it unless it is an integer >= 1."""
    try:
        if isinstance(T, bool):
            raise TypeError
        T = operator.index(T)
    except TypeError:
        raise ValueError(f"T must be an integer >= 1, got {T!r}") from None
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return T


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """Linearly increasing variances beta_1..beta_T, Ho et al. (2020), Sec. 4 (1e-4 to 0.02, T = 1000).

    The T values, in order, as :class:`NoiseSchedule` takes them (element i is beta_{i+1}); read them by
    the paper's t from a schedule: ``NoiseSchedule(linear_betas(T)).betas[t]``."""
    T = _check_T(T)
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), Eq. 17:
    alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T) + s) / (1 + s) * pi / 2)^2,
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at ``max_beta`` (their Sec. 3.2).
    The T values beta_1..beta_T, as :class:`NoiseSchedule` takes them.

    The offset s must be finite and >= 0: s < 0 makes f increase near t = 0 (negative betas). s = 0 is valid
    (beta_1 = sin^2(pi / 2T), ~2.5e-6 at T = 1000: the tiny first step that s = 0.008 was chosen to avoid)."""
    T = _check_T(T)
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    if not (math.isfinite(s) and s >= 0.0):
        raise ValueError(f"s must be finite and >= 0 (Nichol & Dhariwal use 0.008), got {s}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    bad = ~(betas > 0)  # rounding: with a huge s (or T) neighbouring f(t) can be equal, giving beta_t = 0
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"cosine_betas(T={T}, s={s}) gives beta_{i + 1} = {betas[i].item()}, not in (0, {max_beta}]: "
                         f"f(t) does not decrease in float64 there; use a smaller s or T")
    return betas


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Every per-timestep quantity of the forward process, computed once in float64.

    Built from ``betas``, the T variances (beta_1, ..., beta_T). Every attribute has shape ``(T + 1,)`` and
    is indexed by the paper's t; the entry at t = 0 is given in brackets:
      betas            beta_t, variance of q(x_t | x_{t-1}), Eq. 2                      [NaN]
      alphas           alpha_t = 1 - beta_t                                             [NaN]
      alpha_bars       alpha_bar_t = prod_{s <= t} alpha_s, Eq. 4                       [1: the empty product]
      log_alpha_bars   log alpha_bar_t = sum_{s <= t} log(1 - beta_s), for ratios at full precision  [0]
      one_minus_alpha_bars  1 - alpha_bar_t to full relative precision (use it, not 1 - alpha_bars)  [0]
      beta_tildes      posterior variance (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, Eq. 7; 0 at t = 1  [NaN]
      posterior_log_variance_clipped  log beta_tilde_t, with t = 1 (where beta_tilde_1 = 0) set to
                       log beta_tilde_2 so the log is finite (as in improved-diffusion)  [NaN]
      posterior_mean_coef1  sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), multiplies x_0 in Eq. 7  [NaN]
      posterior_mean_coef2  sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), multiplies x_t  [NaN]
      snr              signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021)  [inf]

    ``alpha_bars[t - 1]`` is alpha_bar_{t-1}; over all t at once, ``alpha_bars[:-1]`` lines up with ``betas[1:]``.
    """

    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alpha_bars: torch.Tensor = field(init=False)
    log_alpha_bars: torch.Tensor = field(init=False)
    one_minus_alpha_bars: torch.Tensor = field(init=False)
    beta_tildes: torch.Tensor = field(init=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)
    snr: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence beta_1..beta_T, got shape {tuple(betas.shape)}")
        if betas.numel() > 1 and torch.isnan(betas[0]) and not torch.isnan(betas[1:]).any():
            raise ValueError("betas[0] is NaN: pass the T values beta_1..beta_T (for a schedule s, s.betas[1:]), "
                             "not an array indexed by t")
        bad = ~((betas > 0) & (betas < 1))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"betas must lie in (0, 1), got beta_{i + 1} = {betas[i].item()}")
        T = betas.numel()
        log_alpha_bar_T = torch.log1p(-betas).sum().item()
        if log_alpha_bar_T < math.log(torch.finfo(torch.float64).tiny):
            # alpha_bar_T below the smallest normal float64 (0 at T = 100,000 with the paper's betas): sqrt(alpha_bar_T)
            # is 0 or imprecise, and x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (DDIM) is inf/NaN.
            raise ValueError(f"log alpha_bar_T = {log_alpha_bar_T:.6g} with T = {T}: alpha_bar_T underflows float64 "
                             f"(needs log alpha_bar_T >= {math.log(torch.finfo(torch.float64).tiny):.1f}); use fewer "
                             "steps or smaller betas (the paper's T = 1000 schedule has log alpha_bar_T = -10.1)")
        nan = torch.full((1,), math.nan, dtype=torch.float64)
        zero = torch.zeros(1, dtype=torch.float64)
        # alpha_bar_t = prod_s (1 - beta_s) = exp(sum_s log1p(-beta_s)). 1 - alpha_bar_t is taken as
        # -expm1(...) rather than subtracted from 1: at t = 1 it is ~1e-4, and 1 - cumprod would lose
        # four of float64's sixteen digits there (every coefficient below divides by it).
        log_alpha_bars = torch.cat([zero, torch.cumsum(torch.log1p(-betas), dim=0)])  # [0] = log alpha_bar_0 = 0
        alpha_bars = torch.exp(log_alpha_bars)  # [0] = 1 exactly
        one_minus_alpha_bars = -torch.expm1(log_alpha_bars)
        one_minus_alpha_bars[0] = 0.0  # +0 exactly (-expm1(0) is -0.0, which would make SNR_0 = -inf)
        betas = torch.cat([nan, betas])
        alphas = 1.0 - betas
        # For t = 1..T (index 1:) the coefficients of Eq. 7; alpha_bars[:-1] is alpha_bar_{t-1}.
        omab, omab_prev = one_minus_alpha_bars[1:], one_minus_alpha_bars[:-1]
        beta_tildes = torch.cat([nan, omab_prev / omab * betas[1:]])  # beta_tilde_1 = 0 exactly: x_0 given x_0
        # log beta_tilde_1 = -inf: clip it to log beta_tilde_2 (T = 1 has no t = 2: use log beta_1).
        log_var = torch.log(beta_tildes[1:])
        log_var[0] = log_var[1] if T > 1 else torch.log(betas[1])
        values = dict(
            betas=betas,
            alphas=alphas,
            alpha_bars=alpha_bars,
            log_alpha_bars=log_alpha_bars,
            one_minus_alpha_bars=one_minus_alpha_bars,
            beta_tildes=beta_tildes,
            posterior_log_variance_clipped=torch.cat([nan, log_var]),
            posterior_mean_coef1=torch.cat([nan, alpha_bars[:-1].sqrt() * betas[1:] / omab]),
            posterior_mean_coef2=torch.cat([nan, alphas[1:].sqrt() * omab_prev / omab]),
            snr=alpha_bars / one_minus_alpha_bars,  # [0] = 1 / 0 = inf
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
        """The number of steps T (every per-timestep array has T + 1 entries, t = 0..T)."""
        return self.betas.shape[0] - 1

    def to(self, device: str | torch.device) -> "NoiseSchedule":
        """The same schedule with every coefficient (still float64) on ``device``, so that reading them in a
        training step copies nothing from the host."""
        moved = object.__new__(NoiseSchedule)
        for f in fields(self):
            object.__setattr__(moved, f.name, getattr(self, f.name).to(device))
        return moved

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule(T={self.T}, beta_1={b[1].item():.3g}, beta_T={b[-1].item():.3g})"


def check_t(t: int | torch.Tensor, T: int, first: int = 1) -> torch.Tensor:
    """Return ``t`` as an int64 tensor, raising ``ValueError`` (naming the value and the range) unless
    first <= t <= T. ``first`` is 1 for most quantities (the paper's t = 1..T) and 0 where t = 0 means x_0
    itself (q(x_t | x_0), the diffused marginal)."""
    where = f"[{first}, {T}]"
    if isinstance(t, bool) or (isinstance(t, float)):
        raise ValueError(f"t must be an integer timestep in {where}, got {t!r}")
    t_tensor = torch.as_tensor(t)
    if t_tensor.dtype.is_floating_point or t_tensor.dtype == torch.bool:
        raise ValueError(f"t must be an integer timestep in {where}, got dtype {t_tensor.dtype}")
    t_tensor = t_tensor.long()
    if t_tensor.ndim > 1:
        raise ValueError(f"t must be a scalar or a 1-D batch of timesteps, got shape {tuple(t_tensor.shape)}")
    # The range check reads values on the host; for an accelerator tensor that would force a sync
    # in every training step, so it is skipped there (the NaN entries at t = 0 still poison a misuse).
    if t_tensor.device.type == "cpu" and t_tensor.numel() and (t_tensor.min() < first or t_tensor.max() > T):
        bad = t_tensor[(t_tensor < first) | (t_tensor > T)].flatten()[0].item()
        raise ValueError(f"t must be in {where}, got {bad}")
    return t_tensor


def extract(coef: torch.Tensor, t: int | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Read ``coef[t]`` (a per-timestep array of length T + 1, so t in 0..T) and shape it to broadcast
    against a batch of shape ``shape``.

    ``t`` is a scalar (one timestep for the whole batch; the result has shape ``(1,) * len(shape)``)
    or a 1-D tensor of length ``shape[0]`` (one timestep per example; the result has shape
    ``(B, 1, ..., 1)``). The result keeps ``coef``'s dtype and lives on ``t``'s device.
    This is improved-diffusion's ``_extract_into_tensor``.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("shape must have at least one dimension (the batch)")
    t_tensor = check_t(t, coef.shape[0] - 1, first=0)
    device = t.device if isinstance(t, torch.Tensor) else coef.device
    if t_tensor.ndim == 0:
        return coef.to(device)[t_tensor.to(device)].reshape((1,) * len(shape))
    if t_tensor.shape[0] != shape[0]:
        raise ValueError(f"t has {t_tensor.shape[0]} timesteps but the batch has {shape[0]} examples (shape {shape})")
    out = coef.to(device)[t_tensor.to(device)]
    return out.reshape((shape[0],) + (1,) * (len(shape) - 1))


# ---------------------------------------------------------------------------------------------
# Continuous time (Chapters 11 and 12): the VP SDE of Song et al. (2021), the limit of the linear schedule
# ---------------------------------------------------------------------------------------------
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0  # = T beta_1 and T beta_T of Ho et al.'s schedule for T = 1000


def _continuous_time(t: float | torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    if not (math.isfinite(beta_min) and math.isfinite(beta_max) and 0 < beta_min <= beta_max):
        raise ValueError(f"need 0 < beta_min <= beta_max (finite), got beta_min={beta_min!r}, beta_max={beta_max!r}")
    t = torch.as_tensor(t, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.double()
    if t.device.type == "cpu" and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))].flatten()[0].item()
        raise ValueError(f"continuous time t must lie in [0, 1], got {bad!r}")
    return t


def vp_beta(t: float | torch.Tensor, beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX) -> torch.Tensor:
    """beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]: the diffusion rate of the VP SDE
    dx = -beta(t) x dt / 2 + sqrt(beta(t)) dW (Song et al., 2021, Eq. 11). Ho et al.'s linear chain of T steps is its
    discretization at t = i / T with beta_i = beta(i / T) / T."""
    t = _continuous_time(t, beta_min, beta_max)
    return beta_min + t * (beta_max - beta_min)


def vp_log_alpha_bar(t: float | torch.Tensor, beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX
                     ) -> torch.Tensor:
    """log alpha_bar(t) = -int_0^t beta(u) du = -(beta_min t + (beta_max - beta_min) t^2 / 2), t in [0, 1]
    (Song et al., 2021, Eq. 29: the VP SDE's marginal is N(sqrt(alpha_bar(t)) x_0, (1 - alpha_bar(t)) I))."""
    t = _continuous_time(t, beta_min, beta_max)
    return -(beta_min * t + 0.5 * (beta_max - beta_min) * t**2)


def vp_alpha_bar(t: float | torch.Tensor, beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX
                 ) -> torch.Tensor:
    """alpha_bar(t) = exp(log alpha_bar(t)); 1 - alpha_bar(t) is best taken as ``-torch.expm1(vp_log_alpha_bar(t))``."""
    return torch.exp(vp_log_alpha_bar(t, beta_min, beta_max))
