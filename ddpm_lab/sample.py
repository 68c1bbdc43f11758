"""Sample images from a trained U-Net: ``python -m ddpm_lab.sample --ckpt RUN/ckpt.pt``.

Ancestral sampling (Algorithm 2, all T steps) or DDIM on a strided subset of timesteps, in batches, under
bf16 autocast on CUDA, with a progress bar. Writes an ``.npz`` of uint8 images (N, 32, 32, 3) and a PNG grid.

Several GPUs: ``torchrun --nproc_per_node N -m ddpm_lab.sample ...``. Batch k is drawn from its own seed
(seed, k) and done by rank k mod N; rank 0 gathers the batches in order and writes the files. The samples
are therefore the same for any N (bit for bit on the same kind of device), and N GPUs take 1/N of the time.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .data import to_uint8
from .diffusion import EpsModel, ddim_timesteps, sample_ancestral, sample_ddim
from .schedules import NoiseSchedule
from .train import read_checkpoint
from .unet import PRESETS, UNet

__all__ = ["load_model", "eps_model_of", "sample_images", "image_grid", "save_png", "main"]


def load_model(ckpt: str | os.PathLike[str], device: str | torch.device = "cpu", ema: bool = True
               ) -> tuple[UNet, NoiseSchedule]:
    """The U-Net (EMA weights by default, as the paper samples) and its schedule, from a trainer checkpoint."""
    state = read_checkpoint(ckpt)
    cfg = state["config"]
    try:
        model = UNet(PRESETS[cfg["model"]])
        model.load_state_dict(state["ema" if ema else "model"])
        schedule = NoiseSchedule.linear(cfg["T"], cfg["beta_1"], cfg["beta_T"])
    except (KeyError, RuntimeError, TypeError) as exc:  # a missing field, or weights that do not fit the model
        raise ValueError(f"{ckpt} does not hold a usable model: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), schedule


def eps_model_of(model: UNet, bf16: bool = True) -> EpsModel:
    """Wrap the U-Net as eps_theta(x_t, t) for the samplers: float32 in and out, bf16 autocast on CUDA."""
    device_type = next(model.parameters()).device.type

    @torch.no_grad()
    def eps(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
            return model(xt.float(), t).float()

    return eps


def sample_images(model: UNet, schedule: NoiseSchedule, n: int, batch: int = 256,
                  method: Literal["ancestral", "ddim"] = "ddim", steps: int = 100, eta: float = 0.0,
                  seed: int = 0, bf16: bool = True, progress: bool = True, clip_x0: bool = True,
                  dist: distributed.Dist | None = None) -> np.ndarray | None:
    """n samples as uint8 (n, H, W, C). ``method="ancestral"`` runs all T steps with sigma_t^2 = beta_t;
    ``"ddim"`` runs ``steps`` strided steps with the given eta. ``clip_x0`` clips the predicted x_0 to the
    data range [-1, 1] at every step, as the official DDPM sampler does.

    Batch k (images k*batch ...) is drawn from a generator seeded by (seed, k), so the result does not depend
    on how batches are shared out. With ``dist``, this rank does batches k = rank, rank + N, ...; rank 0
    returns all n samples in order and the other ranks return None."""
    d = dist or distributed.Dist()
    if method not in ("ancestral", "ddim"):
        raise ValueError(f"method must be 'ancestral' or 'ddim', got {method!r}")
    for name, value in (("n", n), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if method == "ddim":
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        ddim_timesteps(schedule.T, steps)  # checks 1 <= steps <= T before any work
    device = next(model.parameters()).device
    res, ch = model.cfg.resolution, model.cfg.in_ch
    eps_model = eps_model_of(model, bf16)
    schedule = schedule.to(device)
    g = torch.Generator(device=device)
    mine: dict[int, np.ndarray] = {}
    n_batches = math.ceil(n / batch)
    for k in tqdm(range(d.rank, n_batches, d.world), disable=not (progress and d.main), desc=f"{method} sampling"):
        start = k * batch
        g.manual_seed(seed * 1_000_003 + k)
        shape = (min(batch, n - start), ch, res, res)
        x_T = torch.randn(shape, generator=g, device=device)
        if method == "ancestral":
            x0 = sample_ancestral(schedule, eps_model, shape, generator=g, x_T=x_T, clip_x0=clip_x0)
        else:
            x0 = sample_ddim(schedule, eps_model, x_T, ddim_timesteps(schedule.T, steps), eta=eta, generator=g,
                             clip_x0=clip_x0)
        assert isinstance(x0, torch.Tensor)
        if not torch.isfinite(x0).all():  # uint8 would turn NaN into black pixels without a word
            bad = int((~torch.isfinite(x0.flatten(1))).any(1).sum())
            raise ValueError(f"{bad} of {x0.shape[0]} samples in batch {k} are not finite (NaN or inf): "
                             "check the checkpoint's weights and the sampler settings")
        mine[k] = to_uint8(x0.clamp(-1, 1)).permute(0, 2, 3, 1).cpu().numpy()
    batches = distributed.gather_batches(mine, d)
    return None if batches is None else np.concatenate(batches)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) array, white padding."""
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike[str], scale: int = 1) -> None:
    """Save a uint8 (H, W, 3) array as PNG, optionally upscaled by an integer factor (nearest neighbour)."""
    from PIL import Image

    im = Image.fromarray(array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    im.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ddpm_lab.sample", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    # not "--n": torchrun would take that for an abbreviation of its own --nnodes / --nproc-per-node
    ap.add_argument("-n", "--num-samples", dest="n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--method", choices=["ancestral", "ddim"], default="ddim")
    ap.add_argument("--steps", type=int, default=100, help="DDIM steps")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="samples.npz")
    ap.add_argument("--grid", default="samples.png")
    ap.add_argument("--raw", action="store_true", help="sample with the raw weights instead of the EMA")
    ap.add_argument("--device", default=None, help="default: cuda if available (under torchrun: cuda:LOCAL_RANK)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for name, value in (("--num-samples", args.n), ("--batch", args.batch), ("--steps", args.steps)):
        if value < 1:
            raise SystemExit(f"error: {name} must be >= 1, got {value}")
    for out in (args.out, args.grid):  # before sampling, not after it
        path = Path(out)
        if path.is_dir():
            raise SystemExit(f"error: {out} is a directory; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"error: cannot create the folder for {out}: {exc.strerror or exc}") from None
        if not os.access(path.parent, os.W_OK):
            raise SystemExit(f"error: cannot write {out}: its folder is not writable")
    d, device = distributed.init(args.device)  # a no-op unless started by torchrun
    try:
        try:  # a bad checkpoint, bad settings or non-finite samples: a plain one-line message, not a traceback
            model, schedule = load_model(args.ckpt, device, ema=not args.raw)
            images = sample_images(model, schedule, args.n, args.batch, args.method, args.steps, args.eta, args.seed,
                                   progress=not args.no_progress, dist=d)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"error: {exc}") from None
        if images is not None:  # rank 0
            np.savez_compressed(args.out, images=images)
            save_png(image_grid(images[:64]), args.grid, scale=2)
            print(f"{len(images)} samples from {d.world} process(es) -> {args.out}, grid -> {args.grid}")
    finally:
        distributed.close(d)


if __name__ == "__main__":
    main()
