"""Diagonal Gaussians: log-density and KL divergence, elementwise and in log-variance form.

Working with log-variances keeps both functions finite for variances from 1e-30 to 1e30, which
matters for the diffusion KLs: beta_tilde_t is ~1e-4 at small t and 0 at t = 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["log_normal", "normal_kl"]

_LOG_2PI = math.log(2.0 * math.pi)

Tensorish = torch.Tensor | float


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
