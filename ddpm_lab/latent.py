"""A latent-variable model where everything is exact: the linear-Gaussian model (probabilistic PCA,
factor analysis), used to check the ELBO and its gradient estimators before diffusion models need them.

    p(z) = N(0, I_k),    p(x | z) = N(W z + b, sigma^2 I_d)

Marginal, posterior and the ELBO of a Gaussian q(z | x) = N(m, diag(v)) all have closed forms
(Tipping & Bishop 1999; Kingma & Welling 2014, Eqs. 1-3). Shapes: x is (d,), z is (k,), a batch of
samples puts the sample index first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .gaussians import _check_count, log_normal

__all__ = ["LinearGaussian", "gaussian_kl_full", "elbo", "elbo_samples", "elbo_grad_reparam", "elbo_grad_score"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True, eq=False)
class LinearGaussian:
    """p(z) = N(0, I_k), p(x | z) = N(W z + b, sigma^2 I_d), in float64."""

    W: torch.Tensor
    b: torch.Tensor
    sigma: float

    def __post_init__(self) -> None:
        W = torch.as_tensor(self.W, dtype=torch.float64)
        b = torch.as_tensor(self.b, dtype=torch.float64)
        if W.ndim != 2:
            raise ValueError(f"W must be a (d, k) matrix, got shape {tuple(W.shape)}")
        if b.shape != (W.shape[0],):
            raise ValueError(f"b must have shape ({W.shape[0]},) to match W, got {tuple(b.shape)}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be positive and finite, got {self.sigma}")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "b", b)

    @classmethod
    def random(cls, d: int, k: int, sigma: float = 0.5, seed: int = 0) -> "LinearGaussian":
        """A model with W and b drawn from N(0, 1) (a fixed seed makes it reproducible)."""
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, k, generator=g, dtype=torch.float64)
        return cls(W, torch.randn(d, generator=g, dtype=torch.float64), sigma)

    @property
    def d(self) -> int:
        return self.W.shape[0]

    @property
    def k(self) -> int:
        return self.W.shape[1]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.shape[-1:] != (self.d,):
            raise ValueError(f"x must end in dimension d={self.d}, got shape {tuple(x.shape)}")
        return x

    def _check_z(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1:] != (self.k,):
            raise ValueError(f"z must end in dimension k={self.k}, got shape {tuple(z.shape)}")
        return z

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling: z ~ p(z), then x ~ p(x | z). Returns (x, z) of shapes (n, d), (n, k)."""
        n = _check_count(n)
        z = torch.randn(n, self.k, generator=generator, dtype=torch.float64)
        x = z @ self.W.T + self.b + self.sigma * torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return x, z

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log N(z; 0, I), summed over the k coordinates."""
        return log_normal(self._check_z(z), 0.0, 0.0).sum(-1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) = log N(x; W z + b, sigma^2 I), summed over the d coordinates."""
        mean = self._check_z(z) @ self.W.T + self.b
        return log_normal(self._check_x(x), mean, 2 * math.log(self.sigma)).sum(-1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(x | z) + log p(z)."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    def marginal_cov(self) -> torch.Tensor:
        """Cov of p(x) = W W^T + sigma^2 I (Tipping & Bishop 1999)."""
        return self.W @ self.W.T + self.sigma**2 * torch.eye(self.d, dtype=torch.float64)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log-evidence log p(x) = log N(x; b, W W^T + sigma^2 I) (batch over leading dims)."""
        x = self._check_x(x)
        dist = torch.distributions.MultivariateNormal(self.b, covariance_matrix=self.marginal_cov())
        return dist.log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior p(z | x) = N(mu, Sigma) with Sigma = (I + W^T W / sigma^2)^{-1} and
        mu = Sigma W^T (x - b) / sigma^2 (Bayes' rule for linear-Gaussian models; Bishop 2006, Sec. 2.3.3).
        Returns mu (shape of x with d -> k) and Sigma (k, k)."""
        x = self._check_x(x)
        s2 = self.sigma**2
        precision = torch.eye(self.k, dtype=torch.float64) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov.T / s2
        return mean, cov


def _cholesky(S: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(S symmetrized, its Cholesky factor L), or a ValueError naming ``name`` unless S is finite, symmetric (to 64
    ulps of its dtype) and positive definite: a covariance that is not would give a meaningless (even negative) KL."""
    if not S.dtype.is_floating_point or not torch.isfinite(S).all():
        raise ValueError(f"{name} must be a finite floating-point matrix, got {S.tolist()} ({S.dtype})")
    if S.numel() and (S - S.mT).abs().max() > 64 * torch.finfo(S.dtype).eps * S.abs().max():
        raise ValueError(f"{name} must be symmetric, got max |{name} - {name}^T| = {(S - S.mT).abs().max().item():.3g}")
    S = 0.5 * (S + S.mT)
    L, info = torch.linalg.cholesky_ex(S)
    if info != 0:
        raise ValueError(f"{name} must be positive definite, got smallest eigenvalue "
                         f"{torch.linalg.eigvalsh(S).min().item():.3g}")
    return S, L


def gaussian_kl_full(m1: torch.Tensor, S1: torch.Tensor, m2: torch.Tensor, S2: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, S1) || N(m2, S2)) for full covariances:
    1/2 [tr(S2^{-1} S1) + (m2 - m1)^T S2^{-1} (m2 - m1) - k + log det S2 - log det S1].

    S1 and S2 must be symmetric positive definite (ValueError otherwise), so the result is >= 0 up to rounding;
    the log-determinants are read off their Cholesky factors, log det S = 2 sum log diag L."""
    if m1.ndim != 1 or S1.ndim != 2:
        raise ValueError(f"one Gaussian per call: means of shape (k,), covariances (k, k); got {tuple(m1.shape)}, "
                         f"{tuple(S1.shape)}")
    if S1.shape != S2.shape or S1.shape[-1] != m1.shape[-1] or m1.shape != m2.shape:
        raise ValueError(f"shape mismatch: m1 {tuple(m1.shape)}, S1 {tuple(S1.shape)}, "
                         f"m2 {tuple(m2.shape)}, S2 {tuple(S2.shape)}")
    if not (torch.isfinite(m1).all() and torch.isfinite(m2).all()):
        raise ValueError(f"means must be finite, got m1 = {m1.tolist()}, m2 = {m2.tolist()}")
    S1, L1 = _cholesky(S1, "S1")
    S2, L2 = _cholesky(S2, "S2")
    k = m1.shape[-1]
    diff = (m2 - m1).unsqueeze(-1)
    maha = torch.cholesky_solve(diff, L2).squeeze(-1) @ (m2 - m1)
    trace = torch.trace(torch.cholesky_solve(S1, L2))
    logdet1, logdet2 = (2.0 * torch.log(torch.diagonal(L)).sum() for L in (L1, L2))
    return 0.5 * (trace + maha - k + logdet2 - logdet1)


def _check_q(model: LinearGaussian, m: torch.Tensor, logvar: torch.Tensor) -> None:
    if m.shape != (model.k,) or logvar.shape != (model.k,):
        raise ValueError(f"q's mean and log-variance must have shape ({model.k},), "
                         f"got {tuple(m.shape)} and {tuple(logvar.shape)}")


def elbo(model: LinearGaussian, x: torch.Tensor, m: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The ELBO E_q[log p(x, z) - log q(z)] in closed form for q(z) = N(m, diag(exp(logvar))):

        E_q[log p(x|z)] = -d/2 log(2 pi sigma^2) - (||x - W m - b||^2 + tr(W diag(v) W^T)) / (2 sigma^2)
        E_q[log p(z)]   = -k/2 log(2 pi) - (||m||^2 + sum v) / 2
        H[q]            =  k/2 log(2 pi e) + sum(logvar) / 2

    (Kingma & Welling 2014, Eqs. 2-3.) Differentiable in m and logvar.
    """
    _check_q(model, m, logvar)
    x = model._check_x(x)
    v = torch.exp(logvar)
    s2 = model.sigma**2
    resid = x - model.W @ m - model.b
    expected_lik = -0.5 * model.d * math.log(2 * math.pi * s2) - (resid @ resid + (model.W**2 @ v).sum()) / (2 * s2)
    expected_prior = -0.5 * model.k * _LOG_2PI - 0.5 * (m @ m + v.sum())
    entropy = 0.5 * model.k * (_LOG_2PI + 1.0) + 0.5 * logvar.sum()
    return expected_lik + expected_prior + entropy


def elbo_samples(model: LinearGaussian, x: torch.Tensor, m: torch.Tensor, logvar: torch.Tensor, n: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """n one-sample Monte Carlo estimates log p(x, z_i) - log q(z_i), z_i = m + exp(logvar / 2) eps_i,
    the reparameterized draws of Kingma & Welling (2014), Sec. 2.4. Their mean is unbiased for the ELBO,
    and they are differentiable in (m, logvar)."""
    _check_q(model, m, logvar)
    n = _check_count(n)
    eps = torch.randn(n, model.k, generator=generator, dtype=torch.float64)
    z = m + torch.exp(0.5 * logvar) * eps
    log_q = log_normal(z, m, logvar).sum(-1)
    return model.log_joint(x, z) - log_q


def elbo_grad_reparam(model: LinearGaussian, x: torch.Tensor, m: torch.Tensor, logvar: torch.Tensor, n: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n single-sample reparameterization-gradient estimates of d ELBO / d(m, logvar), shape (n, 2k):
    the gradient of log p(x, z) - log q(z) at z = m + exp(logvar / 2) eps, eps ~ N(0, I)."""
    _check_q(model, m, logvar)
    n = _check_count(n)
    m_ = m.detach().clone().expand(n, -1).contiguous().requires_grad_(True)
    lv_ = logvar.detach().clone().expand(n, -1).contiguous().requires_grad_(True)
    eps = torch.randn(n, model.k, generator=generator, dtype=torch.float64)
    z = m_ + torch.exp(0.5 * lv_) * eps
    f = model.log_joint(x, z) - log_normal(z, m_, lv_).sum(-1)
    gm, glv = torch.autograd.grad(f.sum(), (m_, lv_))  # row i depends on sample i only
    return torch.cat([gm, glv], dim=1)


def elbo_grad_score(model: LinearGaussian, x: torch.Tensor, m: torch.Tensor, logvar: torch.Tensor, n: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """n single-sample score-function (REINFORCE) estimates of d ELBO / d(m, logvar), shape (n, 2k):
    (log p(x, z) - log q(z)) * grad_{m, logvar} log q(z), z ~ q (Williams 1992; Ranganath et al. 2014).
    Unbiased because E_q[grad log q] = 0; no gradient of p is used."""
    _check_q(model, m, logvar)
    n = _check_count(n)
    eps = torch.randn(n, model.k, generator=generator, dtype=torch.float64)
    v = torch.exp(logvar)
    z = m + v.sqrt() * eps
    f = model.log_joint(x, z) - log_normal(z, m, logvar).sum(-1)
    grad_log_q_m = (z - m) / v  # d/dm log N(z; m, v)
    grad_log_q_lv = 0.5 * ((z - m) ** 2 / v - 1.0)  # d/dlogvar log N(z; m, exp(logvar))
    return f[:, None] * torch.cat([grad_log_q_m, grad_log_q_lv], dim=1)
