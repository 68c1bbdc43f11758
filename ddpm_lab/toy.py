"""2-D toy data, a small MLP denoiser and the training loop of Algorithm 1, deterministic on CPU.

The datasets return float64 tensors of shape (n, 2); :func:`mixture` has an exact density (and exact
optimal denoiser) through :class:`~ddpm_lab.gaussians.GaussianMixture`, the others are samplers only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .diffusion import eps_from_mu, mu_tilde_from_eps, q_sample
from .elbo import term_at
from .gaussians import GaussianMixture, _check_count
from .schedules import NoiseSchedule, check_t

__all__ = ["mixture", "two_moons", "spiral", "sinusoidal_embedding", "MLPDenoiser", "TrainConfig", "train",
           "model_mean_logvar", "eps_model_of", "sample_learned"]

Sampler = Callable[[int, torch.Generator], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def mixture(k: int = 6, radius: float = 1.0, std: float = 0.12) -> GaussianMixture:
    """k equal-weight isotropic Gaussians (std ``std``) evenly spaced on a circle: exact density and scores."""
    if k < 1 or std <= 0:
        raise ValueError(f"need k >= 1 and std > 0, got k={k}, std={std}")
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means,
                           torch.full((k, 2), std**2, dtype=torch.float64))


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.08) -> torch.Tensor:
    """The two interleaving half circles, centred and scaled to about [-1, 1]^2, with Gaussian jitter."""
    n = _check_count(n)
    u = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * torch.tensor([0.8, 1.0], dtype=torch.float64)
    return pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def spiral(n: int, generator: torch.Generator | None = None, noise: float = 0.04, turns: float = 1.5) -> torch.Tensor:
    """An Archimedean spiral r = theta / (2 pi turns) scaled into the unit disc, with Gaussian jitter."""
    n = _check_count(n)
    s = torch.rand(n, generator=generator, dtype=torch.float64).sqrt()  # uniform along the area swept
    theta = s * 2 * math.pi * turns
    pts = torch.stack([s * torch.cos(theta), s * torch.sin(theta)], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
PARAMETERIZATIONS = ("eps", "mu")
OBJECTIVES = ("simple", "vlb")
VARIANCES = ("beta", "beta_tilde", "learned")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """An unknown string is an error, never a silent default."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """The Transformer position encoding applied to timesteps (Ho et al. 2020, Sec. 4; Vaswani et al. 2017):
    [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim / 2)), shape (B, dim)."""
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class MLPDenoiser(nn.Module):
    """A small MLP f(x_t, t) for 2-D data: [x_t, embedding(t)] -> hidden layers (SiLU) -> ``dim`` outputs.

    What the output means (eps, the mean mu, ...) is decided by the loss it is trained with; the network
    works in float32 and returns the caller's dtype. With ``learned_variance=True`` it returns 2 * dim numbers:
    the mean head (eps or mu) and then the raw variance head, read by :func:`model_mean_logvar` with
    ``variance="learned"``."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_dim: int = 32, seed: int = 0,
                 learned_variance: bool = False) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.learned_variance = bool(learned_variance)
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` only
            torch.manual_seed(seed)
            blocks: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
            for _ in range(layers - 1):
                blocks += [nn.Linear(hidden, hidden), nn.SiLU()]
            blocks.append(nn.Linear(hidden, 2 * dim if learned_variance else dim))
            self.net = nn.Sequential(*blocks)

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([xt.float(), sinusoidal_embedding(t, self.time_dim)], dim=1)
        return self.net(h).to(xt.dtype)


def _is_learned(net: nn.Module) -> bool:
    return bool(getattr(net, "learned_variance", False))


def learned_log_variance(schedule: NoiseSchedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log sigma_t^2 = v log beta_t + (1 - v) log beta_tilde_t, the log-space interpolation of Nichol & Dhariwal
    (2021, Eq. 15), with log beta_tilde_1 clipped to log beta_tilde_2 (beta_tilde_1 = 0). ``v`` has the shape of
    x_t with a batch of t (t in 1..T). For v in [0, 1] the variance lies between beta_tilde_t and beta_t."""
    t = check_t(t, schedule.T)
    shape = (-1, *([1] * (v.ndim - 1)))
    log_beta = torch.log(schedule.betas).to(v)[t].reshape(shape)
    log_beta_tilde = schedule.posterior_log_variance_clipped.to(v)[t].reshape(shape)
    return v * log_beta + (1 - v) * log_beta_tilde


def model_mean_logvar(schedule: NoiseSchedule, net: nn.Module, xt: torch.Tensor, t: torch.Tensor,
                      parameterization: Literal["eps", "mu"], variance: Literal["beta", "beta_tilde", "learned"]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """p_theta(x_{t-1} | x_t) = N(mean, exp(logvar)) from the network output, for elbo.term_at: an eps-predictor
    goes through Eq. 11, a mean-predictor is the mean; the variance is beta_t or beta_tilde_t (clipped log at
    t = 1, where beta_tilde_1 is 0), or, with ``variance="learned"``, learned per coordinate. t in 1..T.

    Learned variance (a net built with ``learned_variance=True``, output [mean head, raw]): v = sigmoid(raw) and
    log sigma^2 = v log beta_t + (1 - v) log beta_tilde_t (:func:`learned_log_variance`). This is Nichol &
    Dhariwal's (2021) parameterization, not Ho et al.'s (2020, Table 2), who learned the diagonal Sigma directly;
    the sigmoid keeps v in (0, 1), where Nichol & Dhariwal leave v unconstrained. The mean head of such a net
    may also be used with a fixed variance."""
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    _check_choice("variance", variance, VARIANCES)
    if variance == "learned" and not _is_learned(net):
        raise ValueError("variance 'learned' needs a net with a variance head (MLPDenoiser(learned_variance=True))")
    t = check_t(t, schedule.T)
    out = net(xt, t)
    if _is_learned(net):
        out, raw = out.chunk(2, dim=-1)
    mean = mu_tilde_from_eps(schedule, xt, out, t) if parameterization == "eps" else out
    if variance == "learned":
        return mean, learned_log_variance(schedule, torch.sigmoid(raw), t)
    log_var = torch.log(schedule.betas) if variance == "beta" else schedule.posterior_log_variance_clipped
    return mean, log_var.to(xt)[t].reshape(-1, *([1] * (xt.ndim - 1))).expand_as(xt)


@torch.no_grad()
def sample_learned(schedule: NoiseSchedule, net: nn.Module, shape: tuple[int, ...],
                   parameterization: Literal["eps", "mu"] = "eps",
                   variance: Literal["beta", "beta_tilde", "learned"] = "learned",
                   generator: torch.Generator | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """Ancestral sampling (Algorithm 2) from the reverse model of :func:`model_mean_logvar`, which may have a
    learned variance: x_T ~ N(0, I), then x_{t-1} = mean + exp(logvar / 2) z for t = T..1, z = 0 at t = 1.
    Draws the random numbers in the order of ``diffusion.sample_ancestral`` (x_T, then one z per step t > 1)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64) if x_T is None else x_T
    for t in range(schedule.T, 0, -1):
        mean, logvar = model_mean_logvar(schedule, net, x, torch.full((x.shape[0],), t), parameterization, variance)
        if t == 1:
            return mean
        x = mean + torch.exp(0.5 * logvar) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


# ---------------------------------------------------------------------------------------------
# Training (Algorithm 1)
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a toy run depends on. ``objective``: "simple" is Eq. 14 (for a mean-predictor, the
    unweighted ||mu_tilde - mu_theta||^2), "vlb" is the true bound T * L_t at uniform t (Eq. 5).
    ``variance="learned"`` (a net with a variance head) needs ``objective="vlb"``: L_simple has no variance term.
    ``steps`` and ``batch`` are integers >= 1, ``lr`` is finite and > 0; an unknown string is a ValueError."""

    steps: int = 3000
    batch: int = 256
    lr: float = 1e-2  # 2e-3 left the MLP unable to resolve small t on the mixture (measured in chapter 8)
    parameterization: Literal["eps", "mu"] = "eps"
    objective: Literal["simple", "vlb"] = "simple"
    variance: Literal["beta", "beta_tilde", "learned"] = "beta"
    seed: int = 0
    progress: bool = True
    losses: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the first bad field (:func:`train` checks again: the fields may have changed)."""
        _check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("variance", self.variance, VARIANCES)
        if self.variance == "learned" and self.objective != "vlb":
            raise ValueError(f"variance 'learned' is trained with objective 'vlb' (the true bound), "
                             f"got objective {self.objective!r}")
        for name in ("steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.lr, bool) or not (isinstance(self.lr, numbers.Real) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")


def _loss(schedule: NoiseSchedule, net: nn.Module, x0: torch.Tensor, cfg: TrainConfig,
          g: torch.Generator) -> torch.Tensor:
    if cfg.objective == "vlb":
        model = lambda xt, t: model_mean_logvar(schedule, net, xt, t, cfg.parameterization, cfg.variance)  # noqa: E731
        t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=g)
        return schedule.T * term_at(schedule, model, x0, t, g).mean()
    # Algorithm 1: t ~ Uniform({1..T}), eps ~ N(0, I), gradient step on ||eps - eps_theta(x_t, t)||^2
    t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    xt = q_sample(schedule, x0, t, eps=eps)
    out = net(xt, t)
    if _is_learned(net):  # L_simple trains the mean head only
        out = out.chunk(2, dim=-1)[0]
    if cfg.parameterization == "eps":
        target = eps
    else:  # the posterior mean mu_tilde(x_t, x_0) written through the same eps (Eq. 10)
        target = mu_tilde_from_eps(schedule, xt, eps, t)
    return ((out - target) ** 2).sum(1).mean()


def train(net: nn.Module, data: Sampler, schedule: NoiseSchedule, cfg: TrainConfig) -> TrainConfig:
    """Algorithm 1 with Adam: repeat { x_0 ~ data, t ~ U, eps ~ N(0, I), step on the loss }.

    ``data(n, generator)`` returns n training points. Deterministic for a given ``cfg.seed`` on CPU. Losses
    are appended to ``cfg.losses`` (returned) so an interrupted run keeps its history."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    net.train()
    for _ in tqdm(range(cfg.steps), disable=not cfg.progress, desc="training", leave=False):
        x0 = data(cfg.batch, g)
        if x0.shape[0] != cfg.batch:
            raise ValueError(f"data({cfg.batch}, generator) returned shape {tuple(x0.shape)}, not {cfg.batch} points")
        loss = _loss(schedule, net, x0, cfg, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        cfg.losses.append(loss.item())
    net.eval()
    return cfg


def eps_model_of(schedule: NoiseSchedule, net: nn.Module, parameterization: Literal["eps", "mu"] = "eps"
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The trained net as a noise predictor eps_theta(x_t, t) for the samplers (a mean-predictor is converted;
    of a net with a variance head, the mean head)."""
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)

    def eps_model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = net(xt, t)
        if _is_learned(net):
            out = out.chunk(2, dim=-1)[0]
        return out if parameterization == "eps" else eps_from_mu(schedule, xt, out, t)
    return eps_model
