"""Diagonal Gaussians: log-density and KL divergence, elementwise and in log-variance form.

Working with log-variances keeps both functions finite for variances from 1e-30 to 1e30, which
matters for the diffusion KLs: beta_tilde_t is ~1e-4 at small t and 0 at t = 1.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .schedules import NoiseSchedule

__all__ = ["log_normal", "normal_kl", "discretized_log_normal", "GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)

Tensorish = torch.Tensor | float


def _check_count(n: int, name: str = "n") -> int:
    """A number of draws: an integer >= 0 (0 gives an empty batch), else a ValueError naming it."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{name} must be an integer >= 0 (the number of draws), got {n!r}")
    return int(n)


def _as_tensors(*xs: Tensorish) -> list[torch.Tensor]:
    """Tensors in the widest floating dtype among the inputs (float64 if none is a float tensor)."""
    floats = [x.dtype for x in xs if isinstance(x, torch.Tensor) and x.dtype.is_floating_point]
    dtype = max(floats, key=lambda d: torch.finfo(d).bits) if floats else torch.float64
    device = next((x.device for x in xs if isinstance(x, torch.Tensor)), None)
    return [torch.as_tensor(x, dtype=dtype, device=device) for x in xs]


def log_normal(x: Tensorish, mean: Tensorish, logvar: Tensorish) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar)) = -1/2 [log(2 pi) + logvar + (x - mean)^2 exp(-logvar)].

    Sum over the last dimensions yourself for a diagonal multivariate Gaussian.
    """
    x, mean, logvar = _as_tensors(x, mean, logvar)
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def normal_kl(mean1: Tensorish, logvar1: Tensorish, mean2: Tensorish, logvar2: Tensorish) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats:

        KL = 1/2 [ logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1 ].

    This is the closed form used for every L_{t-1} term of Ho et al. (2020), Eq. 5 (their App. A).
    """
    mean1, logvar1, mean2, logvar2 = _as_tensors(mean1, logvar1, mean2, logvar2)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_log_normal(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor | float,
                           bins: int = 256) -> torch.Tensor:
    """Elementwise log-probability of data x on the grid {-1, -1 + 2/(bins-1), ..., 1} under the discretized
    Gaussian decoder of Ho et al. (2020), Eq. 13:

        P(x) = integral over [x - 1/(bins-1), x + 1/(bins-1)] of N(u; mean, exp(logvar)) du,

    with the first bin extended to -inf and the last to +inf, so the probabilities of all bins sum to 1.

    Numerically stable in both tails: log-CDF differences are taken on the side of the Gaussian where the
    bin lies (log Phi(b) + log(1 - Phi(a) / Phi(b))), and a bin too narrow for that difference to resolve
    uses the midpoint rule, log pdf + log width, whose relative error (width / sd)^2 / 24 is then negligible.
    Computed in float64 and returned in the dtype of ``x``: no NaN or -inf for finite inputs, also in float32;
    NaN or infinite inputs raise a ValueError. An empty ``x`` gives an empty result.
    """
    x_, mean_, logvar_ = _as_tensors(x, mean, logvar)
    out_dtype = x_.dtype
    x_, mean_, logvar_ = (v.double() for v in (x_, mean_, logvar_))
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    outside = ~((x_ >= -1) & (x_ <= 1))  # NaN is outside too
    if outside.any():
        bad = x_[outside].flatten()[0].item()
        raise ValueError(f"x must lie in [-1, 1] (data scaled from {{0..{bins - 1}}}), got {bad}")
    if not (torch.isfinite(mean_).all() & torch.isfinite(logvar_).all()):  # one host sync for both
        if not torch.isfinite(logvar_).all():
            raise ValueError("logvar must be finite (the decoder's scale must be positive)")
        raise ValueError(f"mean must be finite, got {mean_[~torch.isfinite(mean_)].flatten()[0].item()}")
    # Snap x to its bin index k so that neighbouring bins share bit-identical edges (-1 + (2k +- 1) / (bins - 1));
    # x computed as k / 127.5 - 1 carries rounding that would otherwise open gaps between bins at tiny scales.
    k = torch.round((x_ + 1.0) * (bins - 1) / 2.0)
    if ((x_ - (2.0 * k / (bins - 1) - 1.0)).abs() > 1e-3 / (bins - 1)).any():
        raise ValueError(f"x must lie on the grid of {bins} levels -1 + 2k/{bins - 1} (data scaled from {{0..{bins - 1}}})")
    half = 1.0 / (bins - 1)
    inv_sd = torch.exp(-0.5 * logvar_)
    lo = ((2.0 * k - 1.0) / (bins - 1) - 1.0 - mean_) * inv_sd
    hi = ((2.0 * k + 1.0) / (bins - 1) - 1.0 - mean_) * inv_sd
    ndtr = torch.special.log_ndtr
    # lower tail form: log(Phi(hi) - Phi(lo)); upper tail form: log(Phi(-lo) - Phi(-hi)) (same number)
    upper = (lo + hi) > 0
    big = torch.where(upper, ndtr(-lo), ndtr(hi))
    small = torch.where(upper, ndtr(-hi), ndtr(lo))
    ratio = -torch.expm1(small - big)  # 1 - Phi(small side) / Phi(big side), in (0, 1]
    mid = big + torch.log(ratio.clamp_min(torch.finfo(torch.float64).tiny))
    width_z = hi - lo
    midpoint = -0.5 * (_LOG_2PI + (0.5 * (lo + hi)) ** 2) + torch.log(width_z)
    inner = torch.where(ratio < 1e-6, midpoint, mid)
    edge_lo = k == 0  # first bin: (-inf, -1 + half]
    edge_hi = k == bins - 1  # last bin: [1 - half, +inf)
    out = torch.where(edge_lo, ndtr(hi), torch.where(edge_hi, ndtr(-lo), inner))
    return out.to(out_dtype)


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in R^d, with everything a diffusion model needs in closed form.

    ``covs`` is (K, d, d) symmetric positive definite (symmetric to 64 ulps of its dtype; it is then symmetrized,
    so the Cholesky factor and the posterior mean read the same matrix), or (K, d) for diagonal covariances.
    Weights, means and covariances must be finite. All arithmetic is float64. The diffused
    marginal q(x_t) = integral q(x_t | x_0) p(x_0) dx_0 is again a mixture (:meth:`diffused`), so its
    score, the optimal denoiser E[x_0 | x_t] and the optimal noise prediction are exact too.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor
    chol: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(self.means, dtype=torch.float64)
        cov_in = torch.as_tensor(self.covs)
        ulp = torch.finfo(cov_in.dtype if cov_in.dtype.is_floating_point else torch.float64).eps
        cov = cov_in.to(torch.float64)
        if mu.ndim != 2 or mu.shape[0] != w.shape[0] or mu.shape[1] < 1:
            raise ValueError(f"means must be (K, d) with K={w.shape[0]} weights and d >= 1, got shape {tuple(mu.shape)}")
        if not torch.isfinite(w).all() or (w <= 0).any() or abs(w.sum().item() - 1.0) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        if not torch.isfinite(mu).all():
            raise ValueError(f"means must be finite, got {mu.tolist()}")
        if not torch.isfinite(cov).all():
            raise ValueError("covs must be finite")
        w = w / w.sum()  # exact normalization (float32 inputs sum to 1 only to ~1e-7)
        K, d = mu.shape
        if cov.shape == (K, d):
            if (cov <= 0).any():
                raise ValueError("diagonal variances must be positive")
            cov = torch.diag_embed(cov)
        if cov.shape != (K, d, d):
            raise ValueError(f"covs must be (K, d, d) or (K, d) = {(K, d, d)} or {(K, d)}, got {tuple(cov.shape)}")
        asym = (cov - cov.mT).abs().amax((-2, -1))
        bad = asym > 64 * ulp * cov.abs().amax((-2, -1))
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(f"covs[{k}] is not symmetric (max |S - S^T| = {asym[k].item():.3g})")
        cov = 0.5 * (cov + cov.mT)
        L, info = torch.linalg.cholesky_ex(cov)
        if (info != 0).any():
            k = int((info != 0).nonzero()[0])
            raise ValueError(f"covs[{k}] is not symmetric positive definite")
        for name, value in dict(weights=w, means=mu, covs=cov, chol=L).items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_diffused_cache", {})  # (a, s^2) -> diffused mixture: samplers ask every step

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    def _x(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.shape[-1:] != (self.d,):
            raise ValueError(f"x must end in dimension d={self.d}, got shape {tuple(x.shape)}")
        return x

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, Sigma_k), shape (..., K)."""
        diff = (self._x(x).unsqueeze(-2) - self.means).unsqueeze(-1)  # (..., K, d, 1)
        y = torch.linalg.solve_triangular(self.chol, diff, upper=False).squeeze(-1)
        maha = (y**2).sum(-1)
        logdet = 2.0 * torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1)
        return torch.log(self.weights) - 0.5 * (self.d * _LOG_2PI + logdet + maha)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k [log w_k + log N(x; mu_k, Sigma_k)], shape (...)."""
        return torch.logsumexp(self.component_log_probs(x), dim=-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x), shape (..., K)."""
        return torch.softmax(self.component_log_probs(x), dim=-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = sum_k p(k | x) (-Sigma_k^{-1} (x - mu_k)), shape (..., d)."""
        x = self._x(x)
        diff = (x.unsqueeze(-2) - self.means).unsqueeze(-1)  # (..., K, d, 1)
        prec_diff = torch.cholesky_solve(diff, self.chol).squeeze(-1)  # Sigma_k^{-1} (x - mu_k)
        return -(self.responsibilities(x).unsqueeze(-1) * prec_diff).sum(-2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws, shape (n, d): a component k ~ w, then mu_k + L_k eps. n = 0 gives an empty (0, d) tensor."""
        if _check_count(n) == 0:
            return torch.empty(0, self.d, dtype=torch.float64)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, 1, generator=generator, dtype=torch.float64)
        return self.means[k] + (self.chol[k] @ eps).squeeze(-1)

    def scaled(self, a: float | torch.Tensor, s2: float | torch.Tensor) -> "GaussianMixture":
        """The law of a x_0 + s eps for x_0 from this mixture and eps ~ N(0, I), s^2 = ``s2``: the mixture with the same
        weights, means a mu_k and covariances a^2 Sigma_k + s^2 I (a sum of independent Gaussians within each
        component). Any a, s: the VP marginal (a^2 + s^2 = 1, :meth:`diffused`), the straight path of Chapter 12,
        and tensors a, s2 that require grad (then log_prob and score are differentiable in them)."""
        eye = torch.eye(self.d, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s2 * eye)

    def diffused(self, schedule: "NoiseSchedule", t: int) -> "GaussianMixture":
        """The exact marginal q(x_t) = sum_k w_k N(sqrt(alpha_bar_t) mu_k, alpha_bar_t Sigma_k + (1 - alpha_bar_t) I)
        at timestep t in 0..T (x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, Ho et al. Eq. 4, with
        x_0 from this mixture: a sum of independent Gaussians within each component; t = 0 is the data itself)."""
        a, s2 = self._coefs(schedule, t, first=0)
        cache: dict[tuple[float, float], GaussianMixture] = self._diffused_cache  # type: ignore[attr-defined]
        if (a, s2) not in cache:
            if len(cache) > 4096:
                cache.clear()
            cache[(a, s2)] = self.scaled(a, s2)
        return cache[(a, s2)]

    def _coefs(self, schedule: "NoiseSchedule", t: int, first: int = 1) -> tuple[float, float]:
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError(f"t must be a single timestep (one for the whole batch), got shape {tuple(t.shape)}")
            t = int(t.item())
        if isinstance(t, bool) or not isinstance(t, int) or not first <= t <= schedule.T:
            raise ValueError(f"t must be a single timestep in [{first}, {schedule.T}], got {t!r}")
        return math.sqrt(schedule.alpha_bars[t].item()), schedule.one_minus_alpha_bars[t].item()

    def diffused_score(self, schedule: "NoiseSchedule", xt: torch.Tensor, t: int) -> torch.Tensor:
        """grad log q(x_t), the exact score of the diffused marginal, t in 0..T."""
        return self.diffused(schedule, t).score(xt)

    def posterior_mean_x0(self, schedule: "NoiseSchedule", xt: torch.Tensor, t: int) -> torch.Tensor:
        """The optimal denoiser E[x_0 | x_t] (the minimizer of E||x_0 - f(x_t)||^2), shape (..., d).

        Within component k, (x_0, x_t) is jointly Gaussian with x_t = a x_0 + s eps (a = sqrt(alpha_bar_t),
        s^2 = 1 - alpha_bar_t), so E[x_0 | x_t, k] = mu_k + a Sigma_k (a^2 Sigma_k + s^2 I)^{-1} (x_t - a mu_k);
        the components are weighted by p(k | x_t) under the diffused mixture. t in 1..T.
        """
        xt = self._x(xt)
        a, _ = self._coefs(schedule, t)
        q_t = self.diffused(schedule, t)
        diff = (xt.unsqueeze(-2) - a * self.means).unsqueeze(-1)  # (..., K, d, 1)
        gain = a * (self.covs @ torch.cholesky_solve(diff, q_t.chol)).squeeze(-1)  # a Sigma_k C_k^{-1} (x_t - a mu_k)
        cond_means = self.means + gain  # (..., K, d)
        return (q_t.responsibilities(xt).unsqueeze(-1) * cond_means).sum(-2)

    def eps_star(self, schedule: "NoiseSchedule", xt: torch.Tensor, t: int) -> torch.Tensor:
        """The optimal noise prediction E[eps | x_t] = (x_t - sqrt(alpha_bar_t) E[x_0 | x_t]) / sqrt(1 - alpha_bar_t),
        t in 1..T."""
        a, s2 = self._coefs(schedule, t)
        return (self._x(xt) - a * self.posterior_mean_x0(schedule, xt, t)) / math.sqrt(s2)
