"""Train the DDPM U-Net on CIFAR-10: ``python -m ddpm_lab.train`` (and ``... benchmark``).

The paper's recipe is the default preset ``cifar10`` (Ho et al. 2020, Sec. 4 and App. B): T = 1000, linear
betas 1e-4..0.02, eps-prediction with L_simple, Adam 2e-4 with 5000 warmup steps, batch 128, gradient clipping
at 1.0, EMA decay 0.9999, random horizontal flips. ``tiny-cpu`` runs the same loop in seconds on a CPU.

Fast on CUDA: bf16 autocast, torch.compile (``--no-compile`` to skip), channels_last, fused Adam, the whole
dataset on the GPU as uint8 with the flip and scaling done there, TF32 allowed, and no host syncs in the step
loop (the loss is accumulated on the device and read every ``log_every`` steps).

A run is a directory: ``config.json``, ``metrics.jsonl`` (one JSON line per log step), ``ckpt.pt`` (model, EMA,
optimizer, scheduler, step, RNG states, config; written atomically every ``ckpt_every`` steps and at the end).
``--resume`` continues from ``ckpt.pt`` exactly where it stopped. A checkpoint records its timestep convention
(``"t_convention": "paper"``: the network was trained on the paper's t = 1..T); one without it is refused.

Several GPUs: ``torchrun --nproc_per_node N -m ddpm_lab.train ...`` (see ddpm_lab/distributed.py). ``--batch`` stays
the global batch; each of the N processes takes a disjoint B/N slice of every step's batch, DistributedDataParallel
averages the gradients, and rank 0 alone logs, shows progress and writes checkpoints. The data order (a seeded
permutation per epoch), the flips, t and eps are drawn for the global batch, identically on every rank, so a run
on N processes takes the same steps as on one, and a checkpoint resumes under any N that divides the batch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .data import DataNotFoundError, flip_lr, load_cifar10, to_model_space
from .diffusion import q_sample
from .schedules import NoiseSchedule
from .unet import PRESETS, UNet, count_parameters

__all__ = ["TrainConfig", "PRESETS_TRAIN", "Trainer", "main", "read_checkpoint", "T_CONVENTION"]

T_CONVENTION = "paper"  # the network's t input is the paper's timestep 1..T (stored in every checkpoint)


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a trainer checkpoint with ``weights_only=True`` (tensors and plain types only: a file that would run
    code is refused) and check that its network was trained on the paper's timesteps t = 1..T."""
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle.UnpicklingError and friends: anything that is not tensors and plain types
        raise ValueError(f"{path} is not a ddpm_lab checkpoint that loads with weights_only=True: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(ck, dict) or "config" not in ck:
        raise ValueError(f"{path} is not a ddpm_lab trainer checkpoint (no 'config')")
    convention = ck.get("t_convention")
    if convention != T_CONVENTION:
        raise ValueError(f"{path} has t_convention={convention!r}, expected {T_CONVENTION!r}: it was written by an "
                         "older ddpm_lab whose network took t - 1 as its timestep input; retrain it")
    return ck


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in config.json and in every checkpoint)."""

    model: str = "cifar10"  # a key of ddpm_lab.unet.PRESETS
    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    lr: float = 2e-4
    warmup: int = 5000
    batch: int = 128
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    flip: bool = True
    steps: int = 800_000
    minutes: float | None = None  # wall-clock budget; stops (and checkpoints) when exceeded
    log_every: int = 100
    ckpt_every: int = 5000
    seed: int = 0
    subset: int | None = None  # use only the first N training images (tests, CPU demos)
    compile: bool = True
    bf16: bool = True
    channels_last: bool = True


PRESETS_TRAIN: dict[str, TrainConfig] = {
    "cifar10": TrainConfig(),
    "tiny-cpu": TrainConfig(model="tiny", T=100, beta_1=1e-3, beta_T=0.2, warmup=20, batch=16, steps=60,
                            ema_decay=0.99, log_every=10, ckpt_every=30, subset=512, compile=False, bf16=False,
                            channels_last=False),
}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Trainer:
    """Holds the model, its EMA, the optimizer and the data; ``run()`` is the training loop (Algorithm 1).

    Seeds torch's global generator with ``cfg.seed`` (the model's initial weights and dropout draw from it)
    and keeps a generator of its own for flips, t and eps; both are saved in checkpoints. The data order is
    a permutation per epoch seeded by (seed, epoch), so it needs no state.

    ``dist`` (from :func:`ddpm_lab.distributed.init`) makes this one of several processes: the model is
    wrapped in DistributedDataParallel and this rank trains on its slice of each global batch."""

    def __init__(self, cfg: TrainConfig, images: np.ndarray, run_dir: str | os.PathLike[str],
                 device: str | torch.device | None = None, progress: bool = True,
                 dist: distributed.Dist | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or distributed.Dist()
        self.local = distributed.shard(cfg.batch, self.dist)  # this rank's slice of every global batch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.schedule = NoiseSchedule.linear(cfg.T, cfg.beta_1, cfg.beta_T).to(self.device)  # coefficients stay put
        # the data, as uint8 NCHW on the device: 50,000 CIFAR images are 150 MB
        if cfg.subset is not None:
            images = images[: cfg.subset]
        self.data = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.steps_per_epoch = self.data.shape[0] // cfg.batch  # the last partial batch of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.data.shape[0]} images are fewer than one batch of {cfg.batch}")
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self.model = UNet(PRESETS[cfg.model]).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=self.cuda)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)  # flips, t and eps (same on every rank)
        self.step = 0
        self.images_seen = 0
        net: torch.nn.Module = self.model
        if self.dist.active:  # broadcasts rank 0's weights, then averages gradients in backward()
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if self.cuda else None)
            self._seed_dropout()
        self.net = net
        self.forward = torch.compile(net) if (cfg.compile and self.cuda) else net

    def _seed_dropout(self) -> None:
        # ranks must not share dropout masks; a function of (seed, rank, step) also survives a resume under new N
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank * 7_919 + self.step)

    # -- one step ------------------------------------------------------------------------------
    def indices(self, step: int) -> torch.Tensor:
        """The global batch of ``step``: a slice of the permutation of epoch ``step // steps_per_epoch``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:  # once per epoch, on the device: no host sync
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.data.shape[0], generator=g, device=self.device)
            self._perm_epoch = epoch
        return self._perm[k * self.cfg.batch:(k + 1) * self.cfg.batch]

    def batch(self) -> torch.Tensor:
        """This rank's slice of the step's global batch, flipped and scaled to [-1, 1]."""
        x = self.data[self.indices(self.step)[self.local]]
        if self.cfg.flip:  # drawn for the whole global batch, so the draws do not depend on the number of ranks
            flip = torch.rand(self.cfg.batch, generator=self.gen, device=self.device) < 0.5
            x = flip_lr(x, flip[self.local])
        x0 = to_model_space(x)
        return x0.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x0

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """L_simple (Eq. 14): t ~ Uniform{1..T}, eps ~ N(0, I), ||eps - eps_theta(x_t, t)||^2 (mean over pixels).

        t and eps are drawn for the global batch and sliced, like the images."""
        B = self.cfg.batch
        t = torch.randint(1, self.cfg.T + 1, (B,), device=self.device, generator=self.gen)[self.local]
        eps = torch.randn((B, *x0.shape[1:]), device=self.device, generator=self.gen, dtype=x0.dtype)[self.local]
        if self.cfg.channels_last:
            eps = eps.contiguous(memory_format=torch.channels_last)
        xt = q_sample(self.schedule, x0, t, eps=eps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            pred = self.forward(xt, t)
        return F.mse_loss(pred.float(), eps)

    def train_step(self) -> torch.Tensor:
        loss = self.loss(self.batch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        with torch.no_grad():  # EMA: ema <- decay * ema + (1 - decay) * model
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.cfg.ema_decay)
        self.step += 1
        self.images_seen += self.cfg.batch
        return loss.detach()

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "step": self.step, "images_seen": self.images_seen,
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.cuda else None,
                "config": dataclasses.asdict(self.cfg), "t_convention": T_CONVENTION}

    def save(self) -> Path:
        """Write ckpt.pt atomically (rank 0 only: every rank holds the same model, EMA and optimizer)."""
        path = self.run_dir / "ckpt.pt"
        if self.dist.main:
            _atomic_torch_save(self.state(), path)
        return path

    def load(self, path: str | os.PathLike[str]) -> None:
        ck = read_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.step, self.images_seen = ck["step"], ck["images_seen"]
        self.gen.set_state(ck["gen"].cpu())  # generator states are CPU byte tensors, also for CUDA generators
        torch.set_rng_state(ck["torch_rng"].cpu())
        if self.cuda and ck["cuda_rng"] is not None and len(ck["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        if self.dist.active:
            self._seed_dropout()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.main
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        metrics = open(self.run_dir / "metrics.jsonl", "a") if main else None
        start = time.perf_counter()
        deadline = start + 60 * cfg.minutes if cfg.minutes else math.inf
        loss_sum = torch.zeros((), device=self.device)
        window_start, window_steps, last = time.perf_counter(), 0, {}
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.progress and main), desc="train", unit="step")
        self.model.train()
        try:
            while self.step < cfg.steps:
                loss_sum += self.train_step()  # stays on the device: no host sync
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    # the one sync per log interval: the loss averaged over ranks
                    mean_loss = distributed.all_mean(loss_sum / window_steps, self.dist).item()
                    now = time.perf_counter()
                    last = {"step": self.step, "loss": round(mean_loss, 6), "lr": self.sched.get_last_lr()[0],
                            "img_per_s": round(window_steps * cfg.batch / (now - window_start), 1),
                            "images_seen": self.images_seen, "elapsed_s": round(now - start, 1)}
                    if metrics is not None:
                        metrics.write(json.dumps(last) + "\n")
                        metrics.flush()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{last['img_per_s']:.0f}")
                    loss_sum.zero_()
                    window_start, window_steps = now, 0
                    if distributed.any_true(now > deadline, self.device, self.dist):  # ranks stop together
                        break
                if self.step % cfg.ckpt_every == 0:
                    self.save()
        finally:  # also on KeyboardInterrupt: nothing is lost
            self.save()
            bar.close()
            if metrics is not None:
                metrics.close()
        return last


def load_images(args: argparse.Namespace) -> np.ndarray:
    images, _ = load_cifar10("train", root=args.root, source=args.data, download_ok=args.download)
    return images


# ---------------------------------------------------------------------------------------------
# Benchmark: this trainer vs a plain fp32 eager reference, same model, same process
# ---------------------------------------------------------------------------------------------
def benchmark(cfg: TrainConfig, steps: int = 50, warmup_steps: int = 10, device: str | None = None) -> dict[str, Any]:
    """img/s and peak memory of (a) the trainer as configured and (b) fp32 eager (no compile, no bf16,
    no channels_last, unfused Adam), on random uint8 data, plus model FLOPs per image and MFU on CUDA."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = np.random.default_rng(0).integers(0, 256, (max(cfg.batch * 4, 512), 32, 32, 3), dtype=np.uint8)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                               "torch": torch.__version__, "batch": cfg.batch, "model": cfg.model}
    variants = {"trainer": cfg,
                "fp32_eager": dataclasses.replace(cfg, compile=False, bf16=False, channels_last=False)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in variants.items():
            tr = Trainer(c, images, tmp, device=str(dev), progress=False)
            if name == "fp32_eager":  # the reference uses the plain (unfused) optimizer
                tr.opt = torch.optim.Adam(tr.model.parameters(), lr=c.lr, fused=False)
                tr.sched = torch.optim.lr_scheduler.LambdaLR(tr.opt, lambda s: 1.0)
            for _ in range(warmup_steps):
                tr.train_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.train_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            results[name] = {"img_per_s": round(steps * c.batch / dt, 1),
                             "peak_mem_gb": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                             if dev.type == "cuda" else None}
            del tr
    results["speedup"] = round(results["trainer"]["img_per_s"] / results["fp32_eager"]["img_per_s"], 2)
    results["params_m"] = round(count_parameters(UNet(PRESETS[cfg.model])) / 1e6, 2)
    results["train_flops_per_image"] = train_flops_per_image(cfg.model)
    if dev.type == "cuda":  # against the H100 SXM's dense bf16 peak (989 TFLOP/s); state the peak used
        peak = 989e12
        results["mfu_vs_989TF"] = round(results["trainer"]["img_per_s"] * results["train_flops_per_image"] / peak, 3)
    return results


def train_flops_per_image(model: str) -> int:
    """Forward + backward FLOPs per 32x32 image, counted by torch.utils.flop_counter on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    net = UNet(PRESETS[model])
    x, t = torch.randn(1, 3, 32, 32), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        net(x, t).square().mean().backward()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ddpm_lab.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="train", choices=["train", "benchmark"])
    ap.add_argument("--preset", default="cifar10", choices=sorted(PRESETS_TRAIN))
    ap.add_argument("--run-dir", default="runs/cifar10")
    ap.add_argument("--data", nargs="*", help="local CIFAR-10: the tarball, or folder / zip files of images")
    ap.add_argument("--root", help="data/cache directory (default $DDPM_LAB_DATA or ~/.cache/ddpm_lab)")
    ap.add_argument("--download", action="store_true", help="download the official tarball if it is missing")
    ap.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(TrainConfig):  # every config field is a flag: --steps, --minutes, --batch, ...
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if "bool" in kind:
            ap.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            conv = float if "float" in kind else int if "int" in kind else str
            ap.add_argument(flag, dest=f.name, type=conv, default=None)
    ap.add_argument("--bench-steps", type=int, default=50)
    args = ap.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    cfg = dataclasses.replace(PRESETS_TRAIN[args.preset], **overrides)
    if args.command == "benchmark":
        print(json.dumps(benchmark(cfg, steps=args.bench_steps, device=args.device), indent=2))
        return
    d, device = distributed.init(args.device)  # a no-op unless started by torchrun
    try:
        images = load_images(args)
    except DataNotFoundError as exc:  # a plain message, not a traceback from deep inside
        raise SystemExit(f"error: {exc}") from None
    try:
        try:
            trainer = Trainer(cfg, images, args.run_dir, device=device, progress=not args.no_progress, dist=d)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        ckpt = Path(args.run_dir) / "ckpt.pt"
        if args.resume:
            if not ckpt.exists():
                raise SystemExit(f"--resume: no checkpoint at {ckpt}")
            try:
                trainer.load(ckpt)
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
        if d.main:
            where = f"{d.world} processes ({device.type})" if d.active else str(trainer.device)
            print(f"{count_parameters(trainer.model) / 1e6:.2f}M parameters on {where}; "
                  f"step {trainer.step} -> {cfg.steps}, global batch {cfg.batch}", flush=True)
        last = trainer.run()
        if d.main:
            print(json.dumps(last))
    finally:
        distributed.close(d)


if __name__ == "__main__":
    main()
