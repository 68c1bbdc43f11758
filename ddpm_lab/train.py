"""Train the DDPM U-Net on CIFAR-10: ``python -m ddpm_lab.train`` (and ``... benchmark``).

The paper's recipe is the default preset ``cifar10`` (Ho et al. 2020, Sec. 4 and App. B): T = 1000, linear
betas 1e-4..0.02, eps-prediction with L_simple, Adam 2e-4 with 5000 warmup steps, batch 128, gradient clipping
at 1.0, EMA decay 0.9999, random horizontal flips. ``tiny-cpu`` runs the same loop in seconds on a CPU.

Fast on CUDA: bf16 autocast, torch.compile (``--no-compile`` to skip), channels_last, fused Adam, the whole
dataset on the GPU as uint8 with the flip and scaling done there, TF32 allowed, and no host syncs in the step
loop (the loss is accumulated on the device and read every ``log_every`` steps).

A run is a directory: ``config.json``, ``metrics.jsonl`` (one JSON line per log step), ``ckpt.pt`` (model, EMA,
optimizer, scheduler, step, RNG states, config; written atomically every ``ckpt_every`` steps and at the end).
``--resume`` continues from ``ckpt.pt`` exactly where it stopped, with the checkpoint's config (only ``--steps``,
``--minutes``, ``--log-every``, ``--ckpt-every`` and ``--compile`` may change; any other conflicting flag is an
error). Starting over a run directory that holds a checkpoint needs ``--overwrite``. Ctrl-C (SIGINT) or SIGTERM
stops the run at the end of the current step and saves it, so a resumed run is bitwise the uninterrupted one; a
second Ctrl-C aborts at once, keeping the last checkpoint. Checkpoints hold tensors and plain types only and load
with ``weights_only=True``; each records its timestep convention (``"t_convention": "paper"``: the network was
trained on the paper's t = 1..T), and one without it is refused.

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
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .data import DataNotFoundError, atomic_write, balanced_indices, flip_lr, load_cifar10, to_model_space
from .diffusion import q_sample
from .schedules import NoiseSchedule
from .unet import PRESETS, UNet, count_parameters

__all__ = ["TrainConfig", "PRESETS_TRAIN", "RESUME_MAY_CHANGE", "Trainer", "main", "read_checkpoint", "T_CONVENTION",
           "process_start"]

SAVE_BYTES_PER_S = 200e6  # a pessimistic disk, for the time of the final save before one has been measured


def process_start() -> float:
    """When this process started, on the ``time.perf_counter()`` clock (so a wall-clock budget also counts the
    interpreter's start-up and the imports); now, where /proc cannot tell."""
    now_perf = time.perf_counter()
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now_perf
    return now_perf - min(max(age, 0.0), 3600.0)

T_CONVENTION = "paper"  # the network's t input is the paper's timestep 1..T (stored in every checkpoint)


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a trainer checkpoint with ``weights_only=True`` (tensors and plain types only: a file that would run
    code is refused) and check that its network was trained on the paper's timesteps t = 1..T."""
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle.UnpicklingError and friends: anything that is not tensors and plain types
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} is not a ddpm_lab checkpoint that loads with weights_only=True: {why}") from None
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
    ema_warmup: bool = False  # ramp the EMA decay: min(ema_decay, (1 + n) / (10 + n)) at update n (see ema_decay_at)
    dropout: float | None = None  # the U-Net's dropout rate; None: the model preset's (0.1 for cifar10)
    flip: bool = True
    steps: int = 800_000
    minutes: float | None = None  # wall-clock budget of the whole call (CLI: from process start, final save included)
    log_every: int = 100
    ckpt_every: int = 5000
    seed: int = 0
    subset: int | None = None  # use at most N training images, class-balanced (tests, CPU demos)
    compile: bool = True
    bf16: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        """Reject nonsense values with a ValueError that names the flag (every field is a CLI flag)."""
        def bad(name: str, need: str) -> None:
            raise ValueError(f"--{name.replace('_', '-')} must be {need}, got {getattr(self, name)!r}")

        if self.model not in PRESETS:
            bad("model", f"one of {sorted(PRESETS)}")
        for name in ("T", "batch", "steps", "log_every", "ckpt_every"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            bad("warmup", "an integer >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        if self.subset is not None and (isinstance(self.subset, bool) or not isinstance(self.subset, int) or self.subset < 1):
            bad("subset", "an integer >= 1 (or unset for all images)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            bad("grad_clip", "a finite number > 0 (the largest gradient norm)")
        if not 0.0 <= self.ema_decay < 1.0:
            bad("ema_decay", "in [0, 1)")
        if self.dropout is not None and (isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0):
            bad("dropout", "in [0, 1) (or unset for the model preset's)")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            bad("minutes", "a number > 0 (leave it unset for no time limit)")
        if not (0.0 < self.beta_1 <= self.beta_T < 1.0):
            raise ValueError(f"need 0 < --beta-1 <= --beta-T < 1, got {self.beta_1!r} and {self.beta_T!r}")


# Fields a resumed run may change: they decide how long and how verbosely it runs, not which steps it takes.
RESUME_MAY_CHANGE = ("steps", "minutes", "log_every", "ckpt_every", "compile")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _saved_value(saved: dict[str, Any], name: str) -> Any:
    """A field of a checkpoint's config; one written before the field existed ran with its default."""
    return saved.get(name, _DEFAULTS.get(name))


PRESETS_TRAIN: dict[str, TrainConfig] = {
    "cifar10": TrainConfig(),
    "tiny-cpu": TrainConfig(model="tiny", T=100, beta_1=1e-3, beta_T=0.2, warmup=20, batch=16, steps=60,
                            ema_decay=0.99, log_every=10, ckpt_every=30, subset=512, compile=False, bf16=False,
                            channels_last=False),
}




class Trainer:
    """Holds the model, its EMA, the optimizer and the data; ``run()`` is the training loop (Algorithm 1).

    Seeds torch's global generator with ``cfg.seed`` (the model's initial weights and dropout draw from it)
    and keeps a generator of its own for flips, t and eps; both are saved in checkpoints. The data order is
    a permutation per epoch seeded by (seed, epoch), so it needs no state.

    ``dist`` (from :func:`ddpm_lab.distributed.init`) makes this one of several processes: the model is
    wrapped in DistributedDataParallel and this rank trains on its slice of each global batch."""

    def __init__(self, cfg: TrainConfig, images: np.ndarray, run_dir: str | os.PathLike[str],
                 device: str | torch.device | None = None, progress: bool = True,
                 dist: distributed.Dist | None = None, labels: np.ndarray | None = None,
                 overwrite: bool = False, fused: bool | None = None) -> None:
        self.cfg = cfg
        self.overwrite = overwrite  # allow run() to start over a run directory that holds a checkpoint
        self.loaded = False  # set by load(): this trainer continues the run in run_dir
        self.interrupted: str | None = None  # the signal's name when SIGINT/SIGTERM stopped run()
        self._mid_step = False  # True while train_step() is changing the state
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
        if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 32, 32, 3), got {images.dtype} {tuple(images.shape)}")
        if cfg.subset is not None and cfg.subset < len(images):  # class-balanced, not the first N (class-sorted data)
            if labels is None:
                raise ValueError(f"subset={cfg.subset} of {len(images)} images needs the labels to pick a class-balanced subset")
            images = images[balanced_indices(np.asarray(labels), cfg.subset)]
        self.data = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.steps_per_epoch = self.data.shape[0] // cfg.batch  # the last partial batch of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.data.shape[0]} images are fewer than one batch of {cfg.batch}")
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        unet_cfg = PRESETS[cfg.model] if cfg.dropout is None else dataclasses.replace(PRESETS[cfg.model], dropout=cfg.dropout)
        self.model = UNet(unet_cfg).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        # fused Adam (default on CUDA; ``fused=True`` also runs on a CPU): one kernel, and no host sync, where the
        # unfused one reads each parameter's step count with .item()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=self.cuda if fused is None else fused)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)  # flips, t and eps (same on every rank)
        self.step = 0
        self.images_seen = 0
        self.save_s: float | None = None  # how long the last save took (for a wall-clock budget)
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
        self._mid_step = True  # a checkpoint now would mix this step's draws with the old step number
        loss = self.loss(self.batch())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        with torch.no_grad():  # EMA: ema <- decay * ema + (1 - decay) * model
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.ema_decay_at(self.step))
        self.step += 1
        self.images_seen += self.cfg.batch
        self._mid_step = False
        return loss.detach()

    def ema_decay_at(self, n: int) -> float:
        """The EMA decay of update n = 0, 1, 2, ... (a host int: no sync): ``cfg.ema_decay``, or with
        ``cfg.ema_warmup`` the ramp rho_n = min(ema_decay, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage
        with num_updates).

        Why: ema_n = rho_{n-1} ema_{n-1} + (1 - rho_{n-1}) theta_n starts at the random initial weights theta_0, and
        unrolling it, ema_n = prod_{k<n} rho_k theta_0 + sum_k w_k theta_k: the initial weights keep the weight
        prod_{k<n} rho_k. With a fixed rho = 0.9999 that is 0.9999^n, 13.5% after 20,000 steps and 8.2% after
        25,000: a short run's EMA is still partly the random initialization. On the ramp the product telescopes,
        prod_{k<m} (1 + k) / (10 + k) = 9! m! / (m + 9)! = 1 / C(m + 9, 9) (below 1e-3 after 5 updates), and past
        the ramp (n > (10 rho - 1) / (1 - rho) = 89,990 for 0.9999) it shrinks by rho per update: the EMA forgets
        its start at once and averages over the last ~n/9 steps, then over ~1 / (1 - rho) steps as before."""
        rho = self.cfg.ema_decay
        return min(rho, (1.0 + n) / (10.0 + n)) if self.cfg.ema_warmup else rho

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "step": self.step, "images_seen": self.images_seen,
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.cuda else None,
                "config": dataclasses.asdict(self.cfg), "t_convention": T_CONVENTION}

    def save(self) -> Path:
        """Write ckpt.pt atomically (rank 0 only: every rank holds the same model, EMA and optimizer). Only at a
        step boundary: the state of a half-done step cannot be resumed exactly."""
        if self._mid_step:
            raise RuntimeError("save() in the middle of a step: the state would not resume exactly")
        path = self.run_dir / "ckpt.pt"
        if self.dist.main:
            t0 = time.perf_counter()
            try:
                atomic_write(path, lambda f: torch.save(self.state(), f))  # a crash keeps the last one
            except OSError as exc:  # e.g. a full disk: the previous checkpoint is intact
                raise OSError(f"could not write {path} ({exc.strerror or exc}); the previous checkpoint is intact") from exc
            self.save_s = time.perf_counter() - t0
        return path

    def save_estimate_s(self) -> float:
        """The time a save will take: the last one's, else the state's size at SAVE_BYTES_PER_S (model, EMA and
        Adam's two moments: 4 float32 copies of the weights)."""
        if self.save_s is not None:
            return self.save_s
        return 4 * 4 * sum(p.numel() for p in self.model.parameters()) / SAVE_BYTES_PER_S

    def load(self, path: str | os.PathLike[str]) -> None:
        """Continue the run saved in ``path``: its config must match this trainer's, apart from the fields in
        RESUME_MAY_CHANGE (ValueError naming the field and both values otherwise)."""
        ck = read_checkpoint(path, map_location=self.device)
        saved, mine = ck["config"], dataclasses.asdict(self.cfg)
        for name, value in mine.items():
            if name not in RESUME_MAY_CHANGE and _saved_value(saved, name) != value:
                raise ValueError(f"{path} was trained with {name}={_saved_value(saved, name)!r}, this run has {name}={value!r}: "
                                 "a resumed run keeps its config")
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
        self.loaded = True

    # -- the loop ------------------------------------------------------------------------------
    def _start(self) -> None:
        """Refuse to train over another run; on resume, drop log lines past the checkpoint's step."""
        ckpt, log = self.run_dir / "ckpt.pt", self.run_dir / "metrics.jsonl"
        if not self.loaded and ckpt.exists():
            if not self.overwrite:
                raise ValueError(f"{self.run_dir} already holds a run ({ckpt}): continue it with --resume, "
                                 "or start over with --overwrite")
            if self.dist.main:
                ckpt.unlink()
        if self.dist.main and log.exists():
            if self.loaded:  # lines logged after the checkpoint were lost with the steps that made them
                kept = [line for line in log.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= self.step]
                log.write_text("".join(line + "\n" for line in kept))
            else:
                log.unlink()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT/SIGTERM: finish the current step, save, stop. A second one aborts at once."""
        self.interrupted = signal.Signals(signum).name
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        if self.dist.main:
            tqdm.write(f"{self.interrupted}: stopping after step {self.step + 1 if self._mid_step else self.step} "
                       "and saving (send it again to abort without saving)")

    def run(self, deadline: float | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``cfg.minutes``), logging every ``log_every`` steps and saving every
        ``ckpt_every`` steps and at the end. SIGINT/SIGTERM stop it at a step boundary, saved, with
        ``self.interrupted`` set; an exception leaves the last checkpoint as it was.

        ``deadline`` (a ``time.perf_counter()`` time; default: ``cfg.minutes`` from now) is when the final save
        must be done: the run stops at the last log boundary from which one more window of steps and a save
        would still end before it (and does no step at all if a save alone would not)."""
        cfg, main = self.cfg, self.dist.main
        self._start()
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        metrics = open(self.run_dir / "metrics.jsonl", "a") if main else None
        start = time.perf_counter()
        if deadline is None:
            deadline = start + 60 * cfg.minutes if cfg.minutes else math.inf
        loss_sum = torch.zeros((), device=self.device)
        window_start, window_steps, last = time.perf_counter(), 0, {}
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.progress and main), desc="train", unit="step")
        self.model.train()
        window_s = 0.0  # how long the last window of log_every steps took
        try:
            while self.step < cfg.steps:
                if window_steps == 0 and distributed.any_true(
                        time.perf_counter() + window_s + self.save_estimate_s() > deadline, self.device, self.dist):
                    break  # the next window and the final save would overrun the budget
                loss_sum += self.train_step()  # stays on the device: no host sync
                window_steps += 1
                bar.update(1)
                log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
                if log_now:
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
                    window_s, window_start, window_steps = now - window_start, now, 0
                    # ranks stop together when any of them was signalled (the budget is checked before a window)
                    if distributed.any_true(self.interrupted is not None, self.device, self.dist):
                        break
                if self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.interrupted is not None and not self.dist.active:  # one process: stop at this step
                    break
            self.save()  # normal end, deadline or signal: at a step boundary
        finally:  # an exception (not a signal) keeps the last checkpoint: a half-done step cannot be resumed
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if metrics is not None:
                metrics.close()
        return last


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    return load_cifar10("train", root=args.root, source=args.data, download_ok=args.download)


# ---------------------------------------------------------------------------------------------
# Benchmark: this trainer vs a plain fp32 eager reference, same model, same process
# ---------------------------------------------------------------------------------------------
def benchmark(cfg: TrainConfig, steps: int = 50, warmup_steps: int = 10, device: str | None = None) -> dict[str, Any]:
    """img/s and peak memory of (a) the trainer as configured and (b) fp32 eager (no compile, no bf16,
    no channels_last, unfused Adam, and on CUDA TF32 off for matmuls and convolutions: true float32, the
    baseline the speedup is quoted against), on random uint8 data, plus model FLOPs per image and MFU on CUDA
    (against the dense bf16 peak of an H100/H200, 989 TFLOP/s, and the ~790 TFLOP/s bf16 matmul measured on
    the lent H200)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = np.random.default_rng(0).integers(0, 256, (max(cfg.batch * 4, 512), 32, 32, 3), dtype=np.uint8)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                               "torch": torch.__version__, "batch": cfg.batch, "model": cfg.model}
    variants = {"trainer": cfg,
                "fp32_eager": dataclasses.replace(cfg, compile=False, bf16=False, channels_last=False)}
    tf32_saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in variants.items():
            tr = Trainer(c, images, tmp, device=str(dev), progress=False)  # on CUDA: allows TF32
            if name == "fp32_eager":  # the reference uses the plain (unfused) optimizer
                tr.opt = torch.optim.Adam(tr.model.parameters(), lr=c.lr, fused=False)
                tr.sched = torch.optim.lr_scheduler.LambdaLR(tr.opt, lambda s: 1.0)
                if dev.type == "cuda":  # true float32 for the reference (CUDA-only switches)
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
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
                             if dev.type == "cuda" else None,
                             "tf32": bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
                             if dev.type == "cuda" else None}
            del tr
            if dev.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_saved
    results["reference"] = ("fp32_eager: float32 eager, unfused Adam" +
                            (", TF32 off (matmul and cuDNN)" if dev.type == "cuda" else " (CPU: no TF32)"))
    results["speedup"] = round(results["trainer"]["img_per_s"] / results["fp32_eager"]["img_per_s"], 2)
    results["params_m"] = round(count_parameters(UNet(PRESETS[cfg.model])) / 1e6, 2)
    results["train_flops_per_image"] = train_flops_per_image(cfg.model)
    if dev.type == "cuda":  # against the dense bf16 peak of H100 SXM / H200 (989 TFLOP/s) and the measured matmul
        achieved = results["trainer"]["img_per_s"] * results["train_flops_per_image"]
        results["achieved_tflops"] = round(achieved / 1e12, 1)
        results["mfu_vs_989TF"] = round(achieved / 989e12, 3)
        results["mfu_vs_790TF_measured"] = round(achieved / 790e12, 3)
    return results


def train_flops_per_image(model: str) -> int:
    """Forward + backward FLOPs per 32x32 image, counted by torch.utils.flop_counter on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    net = UNet(PRESETS[model])
    x, t = torch.randn(1, 3, 32, 32), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        net(x, t).square().mean().backward()
    return int(counter.get_total_flops())


def resolve_config(args: argparse.Namespace, overrides: dict[str, Any]) -> TrainConfig:
    """The run's config: the preset with the flags applied; on ``--resume``, the checkpoint's config, where a flag
    outside RESUME_MAY_CHANGE that disagrees with it, or a ``--preset`` of another network, is an error naming
    both values."""
    if not args.resume:
        return dataclasses.replace(PRESETS_TRAIN[args.preset or "cifar10"], **overrides)
    ckpt = Path(args.run_dir) / "ckpt.pt"
    if not ckpt.exists():
        raise ValueError(f"--resume: no checkpoint at {ckpt}")
    saved = read_checkpoint(ckpt)["config"]
    wanted = dict(overrides)
    if args.preset is not None and "model" not in wanted:  # an explicit preset must name the same network
        wanted["model"] = PRESETS_TRAIN[args.preset].model
    for name, value in wanted.items():
        if name not in RESUME_MAY_CHANGE and _saved_value(saved, name) != value:
            via = f"--{name.replace('_', '-')} {value}" if name in overrides else f"--preset {args.preset} (model={value!r})"
            raise ValueError(f"{via} conflicts with the checkpoint's {name}={_saved_value(saved, name)!r}: a resumed run keeps "
                             f"its config (only {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)} may change)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in fields},
                          **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}})


def main(argv: list[str] | None = None) -> None:
    started = process_start()  # --minutes budgets the whole call: start-up, data loading, training, final save
    ap = argparse.ArgumentParser(prog="python -m ddpm_lab.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="train", choices=["train", "benchmark"])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS_TRAIN), help="default: cifar10")
    ap.add_argument("--run-dir", default="runs/cifar10")
    ap.add_argument("--data", nargs="*", help="local CIFAR-10: the tarball, or folder / zip files of images")
    ap.add_argument("--root", help="data/cache directory (default $DDPM_LAB_DATA or ~/.cache/ddpm_lab)")
    ap.add_argument("--download", action="store_true", help="download the official tarball if it is missing")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt, with its config")
    group.add_argument("--overwrite", action="store_true", help="start over, deleting the run in RUN_DIR")
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
    try:  # a bad flag or an unreadable checkpoint is one line, not a traceback
        cfg = resolve_config(args, overrides)
        if args.command == "benchmark" and args.bench_steps < 1:
            raise ValueError(f"--bench-steps must be >= 1, got {args.bench_steps}")
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.command == "benchmark":
        print(json.dumps(benchmark(cfg, steps=args.bench_steps, device=args.device), indent=2))
        return
    ckpt = Path(args.run_dir) / "ckpt.pt"
    if ckpt.exists() and not (args.resume or args.overwrite):  # before the data loads: fail fast
        raise SystemExit(f"error: {args.run_dir} already holds a run ({ckpt}): continue it with --resume, "
                         "or start over with --overwrite")
    d, device = distributed.init(args.device)  # a no-op unless started by torchrun
    try:
        try:
            images, labels = load_images(args)
            trainer = Trainer(cfg, images, args.run_dir, device=device, progress=not args.no_progress, dist=d,
                              labels=labels, overwrite=args.overwrite)
            if args.resume:
                trainer.load(ckpt)
        except (DataNotFoundError, ValueError, OSError) as exc:  # a plain message, not a traceback from deep inside
            raise SystemExit(f"error: {exc}") from None
        if d.main:
            where = f"{d.world} processes ({device.type})" if d.active else str(trainer.device)
            print(f"{count_parameters(trainer.model) / 1e6:.2f}M parameters on {where}; "
                  f"step {trainer.step} -> {cfg.steps}, global batch {cfg.batch}", flush=True)
        try:
            last = trainer.run(deadline=started + 60 * cfg.minutes if cfg.minutes else None)
        except OSError as exc:  # e.g. a full disk while saving
            raise SystemExit(f"error: {exc}") from None
        if d.main:
            print(json.dumps(last))
        if trainer.interrupted is not None:
            if d.main:
                print(f"{trainer.interrupted} at step {trainer.step}: saved {ckpt}; continue with --resume", flush=True)
            raise SystemExit(130 if trainer.interrupted == "SIGINT" else 143)
    finally:
        distributed.close(d)


if __name__ == "__main__":
    main()
