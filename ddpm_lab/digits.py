"""A DDPM on real images that trains on one CPU thread: scikit-learn's 8x8 handwritten digits.

The data set (1,797 images, 8x8, one channel, 17 grey levels 0..16, ten classes) ships inside the
scikit-learn wheel, so it loads offline. Everything here follows Ho, Jain & Abbeel (2020):

* levels k in {0..K-1} map to x = 2k / (K - 1) - 1 in [-1, 1] (their Sec. 3.3 with K = 17 instead of 256);
* :func:`train_digits` is Algorithm 1 (L_simple, Eq. 14) with Adam, on one thread, bit-for-bit reproducible;
* :func:`bound_terms` is the bound of Eq. 5 term by term with the discretized decoder of Eq. 13 on K levels,
  and the distortion of the x_0 prediction at every t (their Fig. 5);
* :class:`DigitsClassifier` is a small classifier of the real digits, used to label samples and as a feature
  extractor for a Frechet distance (not Inception: the numbers are comparable only within this data set).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import EpsModel, mu_tilde_from_eps, predict_x0_from_eps, q_sample
from .elbo import kl_term, prior_term
from .gaussians import discretized_log_normal
from .metrics import nearest_neighbours
from .schedules import NoiseSchedule
from .unet import PRESETS, UNet

__all__ = ["LEVELS", "SIZE", "load_digits_split", "to_model_space", "to_levels", "level_histograms",
           "independent_pixel_bits", "sample_independent_pixels", "DigitsTrainConfig", "train_digits",
           "bound_terms", "fitted_variances", "DigitsClassifier", "train_classifier", "classify", "nearest_train_distance"]

LEVELS = 17  # grey levels 0..16 of the scikit-learn digits
SIZE = 8  # images are 8x8


def _check_int(value: object, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _check_images(levels: torch.Tensor | np.ndarray, name: str = "levels") -> None:
    shape = tuple(levels.shape)
    if len(shape) != 4 or shape[1:] != (1, SIZE, SIZE):
        raise ValueError(f"{name} must have shape (N, 1, {SIZE}, {SIZE}), got {shape}")


def _check_levels(levels: torch.Tensor, K: int) -> torch.Tensor:
    """An integer tensor (N, 1, 8, 8) of levels 0..K-1, else a ValueError naming the problem."""
    K = _check_int(K, "K", 2)
    if isinstance(levels, np.ndarray):
        levels = torch.from_numpy(levels)
    if not isinstance(levels, torch.Tensor):
        raise ValueError(f"levels must be a tensor or array, got {type(levels).__name__}")
    if levels.dtype.is_floating_point or levels.dtype.is_complex or levels.dtype == torch.bool:
        raise ValueError(f"levels must be integers 0..{K - 1}, got dtype {levels.dtype}")
    _check_images(levels)
    if levels.numel() and (levels.min() < 0 or levels.max() > K - 1):
        bad = levels[(levels < 0) | (levels > K - 1)].flatten()[0].item()
        raise ValueError(f"levels must lie in 0..{K - 1}, got {bad}")
    return levels


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_digits_split(seed: int = 0, held_out: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 levels 0..16, shape (N, 1, 8, 8), split into (train images, train labels,
    held-out images, held-out labels). The split is stratified: in each class, round(held_out * n_class) images,
    chosen by a permutation seeded with ``seed``, are held out. Both parts are in the data set's order."""
    from sklearn.datasets import load_digits  # the images ship inside the scikit-learn wheel: no download

    if isinstance(held_out, bool) or not isinstance(held_out, numbers.Real) or not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    seed = _check_int(seed, "seed", 0)
    data = load_digits()
    images = data.images.astype(np.uint8)[:, None]  # the stored floats are the integers 0..16
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test[rng.permutation(idx)[: round(held_out * len(idx))]] = True
    return images[~test], labels[~test], images[test], labels[test]


def to_model_space(levels: torch.Tensor | np.ndarray, K: int = LEVELS) -> torch.Tensor:
    """Levels k in {0..K-1}, integers of shape (N, 1, 8, 8), to x = 2k / (K - 1) - 1 in [-1, 1], float32
    (Ho et al. 2020, Sec. 3.3, with K levels instead of 256)."""
    levels = _check_levels(levels, K)
    return levels.float() * (2.0 / (K - 1)) - 1.0


def to_levels(x: torch.Tensor, K: int = LEVELS) -> torch.Tensor:
    """The inverse of :func:`to_model_space` on the grid: k = round((x + 1)(K - 1) / 2), clipped to 0..K-1, uint8
    (K <= 256). ``x`` is a float tensor (N, 1, 8, 8), e.g. a sample; NaN raises a ValueError."""
    K = _check_int(K, "K", 2)
    if K > 256:
        raise ValueError(f"K must be <= 256 for uint8 levels, got {K}")
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor in [-1, 1], got {got}")
    _check_images(x, "x")
    if torch.isnan(x).any():
        raise ValueError("x must not contain NaN")
    return ((x.double() + 1.0) * (K - 1) / 2.0).round().clamp(0, K - 1).to(torch.uint8)


def level_histograms(levels: np.ndarray | torch.Tensor, K: int = LEVELS, pseudo_count: float = 1.0) -> np.ndarray:
    """Per-pixel level frequencies (64, K) with ``pseudo_count`` added to every cell (Laplace's rule for
    pseudo_count = 1), so a level never seen at a pixel in training keeps a probability > 0."""
    levels = _check_levels(levels, K)
    if not (isinstance(pseudo_count, numbers.Real) and math.isfinite(pseudo_count) and pseudo_count > 0):
        raise ValueError(f"pseudo_count must be a finite number > 0, got {pseudo_count!r}")
    flat = levels.reshape(len(levels), -1).long().numpy()
    counts = np.stack([np.bincount(flat[:, j], minlength=K) for j in range(flat.shape[1])]).astype(np.float64)
    counts += pseudo_count
    return counts / counts.sum(1, keepdims=True)


def independent_pixel_bits(levels: np.ndarray | torch.Tensor, probs: np.ndarray) -> np.ndarray:
    """Bits/dim of each image under the independent-pixel model P(x) = prod_j probs[j, x_j] (a product of
    per-pixel histograms, :func:`level_histograms`): -sum_j log2 probs[j, x_j] / 64. Shape (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != SIZE * SIZE or (probs <= 0).any():
        raise ValueError(f"probs must be ({SIZE * SIZE}, K) positive frequencies, got shape {probs.shape}")
    levels = _check_levels(levels, probs.shape[1])
    flat = levels.reshape(len(levels), -1).long().numpy()
    return -np.log2(probs[np.arange(flat.shape[1]), flat]).mean(1)


def sample_independent_pixels(probs: np.ndarray, n: int, seed: int = 0) -> torch.Tensor:
    """n images drawn from the independent-pixel model (each pixel from its own histogram), uint8 (n, 1, 8, 8)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != SIZE * SIZE:
        raise ValueError(f"probs must be ({SIZE * SIZE}, K), got shape {probs.shape}")
    n = _check_int(n, "n", 0)
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(torch.from_numpy(probs), n, replacement=True, generator=g)  # (64, n)
    return draws.T.reshape(n, 1, SIZE, SIZE).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Algorithm 1 on one CPU thread
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitsTrainConfig:
    """Algorithm 1's settings: ``steps`` Adam steps of batch ``batch`` (images drawn from a seeded permutation per
    epoch), learning rate ``lr`` with a linear warmup over ``warmup`` steps and cosine decay to 0, and an exponential
    moving average of the weights with decay ``ema`` (Ho et al. 2020, App. B, use 0.9999 for 800k steps)."""

    steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    warmup: int = 50
    ema: float = 0.995
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int(self.steps, "steps", 1)
        _check_int(self.batch, "batch", 1)
        _check_int(self.warmup, "warmup", 0)
        _check_int(self.seed, "seed", 0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema!r}")


def train_digits(levels: torch.Tensor | np.ndarray, schedule: NoiseSchedule,
                 cfg: DigitsTrainConfig = DigitsTrainConfig(), preset: str = "digits"
                 ) -> tuple[UNet, np.ndarray]:
    """Algorithm 1: repeat {x_0 from the data, t ~ Uniform{1..T}, eps ~ N(0, I), an Adam step on
    ||eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t)||^2} (L_simple, Ho et al. 2020, Eq. 14).

    Returns (the EMA network in eval mode, the per-step losses). Deterministic for a given ``cfg.seed`` on one
    thread: every random number comes from one seeded generator (set ``torch.set_num_threads(1)`` for bit-for-bit
    repeatability; more threads may change the summation order)."""
    x_all = to_model_space(levels)
    if len(x_all) < 1:
        raise ValueError("levels is empty: nothing to train on")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = UNet(PRESETS[preset])
    ema = UNet(PRESETS[preset])
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    losses = np.empty(cfg.steps)
    order, at = torch.randperm(len(x_all), generator=g), 0
    net.train()
    for step in range(cfg.steps):
        if at + cfg.batch > len(order):  # a new epoch: a new permutation
            order, at = torch.randperm(len(x_all), generator=g), 0
        x0 = x_all[order[at: at + cfg.batch]]
        at += cfg.batch
        t = torch.randint(1, schedule.T + 1, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(net(q_sample(schedule, x0, t, eps=eps), t), eps)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1.0 - cfg.ema)
        losses[step] = loss.item()
    return ema.eval(), losses


# ---------------------------------------------------------------------------------------------
# The bound of Eq. 5 with a K-level decoder, and the distortion along the chain
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def bound_terms(eps_model: EpsModel, schedule: NoiseSchedule, levels: torch.Tensor | np.ndarray, K: int = LEVELS,
                seed: int = 0, variance: str | torch.Tensor = "beta") -> dict[str, torch.Tensor]:
    """Every term of the bound of Ho et al. (2020), Eq. 5, for each image, in bits/dim, with the discretized decoder
    of Eq. 13 on K levels (bins of width 2 / (K - 1), the outer two extended to infinity), and the distortion of
    x0_hat(x_t) = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) (Eq. 4 inverted) at every t.

    The reverse model is N(mu_theta, sigma_t^2) with mu_theta of Eq. 11 and sigma_t^2 = beta_t (``variance="beta"``)
    or beta_tilde_t (``"beta_tilde"``) for t >= 2, the two choices of Sec. 3.2, with the decoder at t = 1 using
    beta_tilde_2 (beta_tilde_1 = 0) as in the official code; or ``variance`` is a tensor of T + 1 variances
    sigma_t^2 indexed by t (entry 0 unused), e.g. :func:`fitted_variances`. One draw of x_t per image and t,
    from a generator seeded with (seed, t). Returns
      ``terms``  (N, T + 1): column j is L_j in bits/dim (column 0 the decoder L_0, column T the prior L_T); a row
                 sums to the image's bound;
      ``mse``    (T + 1,): mean squared error of x0_hat(x_t) in model units ([-1, 1] scale), entry t for t = 1..T
                 (entry 0 is 0: x_0 itself); the error of the mean the bound uses (:func:`fitted_variances`);
      ``mse_clipped`` (T + 1,): the same for x0_hat clipped to [-1, 1], the reconstruction a receiver would show
                 (Ho et al.'s Fig. 5). On the [0, 255] scale the RMSE is 127.5 sqrt(mse_clipped)."""
    x0 = to_model_space(levels, K).double()
    n, dims, T = x0.shape[0], x0[0].numel(), schedule.T
    if isinstance(variance, torch.Tensor):
        var = variance.double()
        if var.shape != (T + 1,) or not bool((var[1:] > 0).all() & torch.isfinite(var[1:]).all()):
            raise ValueError(f"variance must be T + 1 = {T + 1} variances, positive and finite for t = 1..T, got "
                             f"shape {tuple(var.shape)}")
        log_var = torch.log(var)
    elif variance in ("beta", "beta_tilde"):
        log_var = schedule.posterior_log_variance_clipped.clone()
        if variance == "beta":
            log_var[2:] = torch.log(schedule.betas[2:])
    else:
        raise ValueError(f"variance must be 'beta', 'beta_tilde' or a tensor of T + 1 variances, got {variance!r}")
    terms = torch.zeros(n, T + 1, dtype=torch.float64)
    mse = torch.zeros(T + 1, dtype=torch.float64)
    mse_clipped = torch.zeros(T + 1, dtype=torch.float64)
    terms[:, T] = prior_term(schedule, x0)
    g = torch.Generator()
    for t in range(1, T + 1):
        eps = torch.randn(x0.shape, generator=g.manual_seed(seed * 1_000_003 + t), dtype=torch.float64)
        tt = torch.full((n,), t, dtype=torch.long)
        xt = q_sample(schedule, x0, tt, eps=eps)
        eps_hat = eps_model(xt.float(), tt).double()
        mean = mu_tilde_from_eps(schedule, xt, eps_hat, tt)
        logvar = log_var[t].expand_as(x0)
        if t == 1:
            terms[:, 0] = -discretized_log_normal(x0, mean, logvar, bins=K).flatten(1).sum(1)
        else:
            terms[:, t - 1] = kl_term(schedule, x0, xt, tt, mean, logvar)
        x0_hat = predict_x0_from_eps(schedule, xt, eps_hat, t)
        mse[t] = (x0_hat - x0).pow(2).mean()
        mse_clipped[t] = (x0_hat.clamp(-1.0, 1.0) - x0).pow(2).mean()
    return {"terms": terms / (dims * math.log(2.0)), "mse": mse, "mse_clipped": mse_clipped}


def fitted_variances(schedule: NoiseSchedule, mse: torch.Tensor) -> torch.Tensor:
    """The best isotropic reverse variances for a given mean: sigma_t^2 = beta_tilde_t + c_1^2 mse_t, t = 1..T
    (entry 0 is NaN), where mse_t = E||x_0 - x0_hat(x_t)||^2 / d (``bound_terms(...)["mse"]``, measured on
    training images) and c_1 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) (Eq. 7). Minimizes the average of
    KL(N(mu_tilde, beta_tilde) || N(mu_theta, sigma^2)) over sigma^2, because mu_tilde - mu_theta = c_1 (x_0 - x0_hat)
    (Bao et al. 2022, analytic-DPM, in its isotropic form)."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    if mse.shape != (schedule.T + 1,) or not bool(torch.isfinite(mse[1:]).all() & (mse[1:] >= 0).all()):
        raise ValueError(f"mse must hold T + 1 = {schedule.T + 1} finite values >= 0 (entry t for t = 1..T), got "
                         f"shape {tuple(mse.shape)}")
    beta_tilde = schedule.beta_tildes.clone()
    beta_tilde[1] = 0.0  # beta_tilde_1 = 0: the decoder's variance is the x_0 error alone
    var = beta_tilde + schedule.posterior_mean_coef1**2 * mse
    var[0] = math.nan
    return var


# ---------------------------------------------------------------------------------------------
# A small classifier of the real digits (labels and Frechet features)
# ---------------------------------------------------------------------------------------------
class DigitsClassifier(nn.Module):
    """64 pixels -> 128 -> ReLU -> ``features`` -> ReLU -> 10 logits; ``embed`` gives the ``features``-dimensional
    penultimate activations used for the Frechet distance."""

    def __init__(self, features: int = 32, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 128), nn.ReLU(),
                                      nn.Linear(128, features), nn.ReLU())
            self.head = nn.Linear(features, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(levels: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, steps: int = 200,
                     lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> DigitsClassifier:
    """Full-batch Adam on the cross-entropy of :class:`DigitsClassifier` (deterministic); returns it in eval mode."""
    x = to_model_space(levels)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if y.shape != (len(x),) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"labels must be {len(x)} integers 0..9, got shape {tuple(y.shape)}")
    _check_int(steps, "steps", 1)
    net = DigitsClassifier(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def classify(net: DigitsClassifier, levels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, 10), penultimate features (N, d)) of digit images given as levels."""
    x = to_model_space(levels)
    f = net.embed(x)
    return torch.softmax(net.head(f), 1).double().numpy(), f.double().numpy()


def nearest_train_distance(levels: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the Euclidean distance to its nearest training image on the 0..16 level scale (over the
    64 pixels), and that image's index: :func:`ddpm_lab.metrics.nearest_neighbours` (exact, so a copy is at 0) on
    the levels, rescaled from its [0, 1] pixel scale."""
    a = _check_levels(levels, LEVELS).numpy().astype(np.uint8).reshape(len(levels), SIZE, SIZE, 1)
    b = _check_levels(train, LEVELS).numpy().astype(np.uint8).reshape(len(train), SIZE, SIZE, 1)
    dist, idx = nearest_neighbours(a, b)
    return dist.astype(np.float64) * 255, idx
