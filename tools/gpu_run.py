"""The GPU run of ../shared/gpu/RUNBOOK.md as one script, rehearsed on a CPU with ``--cpu-rehearsal``.

Commands (each one prints what it did; ``run`` writes its artifacts to ``--out`` as it goes):

    python tools/gpu_run.py stash FILE... [--stash-dir /root/stash]      copy carried files there, print sha256
    python tools/gpu_run.py join PART... --output F --sha256 HEX         join split parts, verify, else exit 1
    python tools/gpu_run.py verify FILE --sha256 HEX
    python tools/gpu_run.py run --out $OUT --data train-0.zip [--stages bench,train,sample,eval] [--minutes 9]

``run``'s stages: ``bench`` (the trainer against the fp32 eager reference, ddpm_lab.train.benchmark), ``train``
(decode the data with ddpm_lab.data into a cache keyed by the zips' sha256, so a second run reads the cache; train
with a wall-clock budget: the whole call has ``--minutes``, of which ``--eval-reserve-s`` is kept for sampling and
evaluation), ``sample`` (DDIM with the EMA weights, in memory: the checkpoint never leaves the device) and
``eval`` (FID and KID with the standard TF-Inception network of ddpm_lab.fid against the training images used,
when ``--inception`` names its verified file; else skipped with the reason). Artifacts: metrics.json (rewritten
after each stage), loss_curve.png, samples_grid.png, samples_K.npz (uint8, under 16 MiB each).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_lab import data as D  # noqa: E402
from ddpm_lab import train as TR  # noqa: E402

STARTED = TR.process_start()  # --minutes budgets the whole call, interpreter start-up and imports included

SAMPLES_PER_FILE = 4000  # 4000 x 3072 bytes = 11.7 MiB < 16 MiB per returned file


def sha256(path: str | Path) -> str:
    return D.file_digest(path, "sha256")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {msg}", flush=True)


def cmd_stash(args: argparse.Namespace) -> None:
    dest = Path(args.stash_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for f in args.files:
        shutil.copyfile(f, dest / Path(f).name)
        log(f"stashed {dest / Path(f).name} ({Path(f).stat().st_size:,} bytes, sha256 {sha256(dest / Path(f).name)})")


def verify(path: Path, expected: str) -> None:
    got = sha256(path)
    if got != expected.lower():
        raise SystemExit(f"error: sha256 of {path} is {got}, expected {expected}")
    log(f"verified {path}: sha256 {got}")


def cmd_join(args: argparse.Namespace) -> None:
    missing = [p for p in args.parts if not Path(p).exists()]
    if missing:
        raise SystemExit(f"error: missing part(s) {missing}")
    out, digest = Path(args.output), hashlib.sha256()

    def write(w) -> None:  # the joined file is hashed as it is written and refused before it gets its name
        for p in args.parts:
            with open(p, "rb") as r:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    digest.update(chunk)
                    w.write(chunk)
        if digest.hexdigest() != args.sha256.lower():
            raise SystemExit(f"error: the joined parts have sha256 {digest.hexdigest()}, expected {args.sha256}")
    D.atomic_write(out, write)
    log(f"joined {len(args.parts)} parts into {out}: sha256 {digest.hexdigest()} verified")


class Run:
    """One ``run`` call: its config, its output folder and the metrics written there after every stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        preset = "tiny-cpu" if args.cpu_rehearsal else args.preset
        overrides = {k: v for k, v in {"batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                                        "ema_decay": args.ema_decay, "ema_warmup": args.ema_warmup,
                                        "dropout": args.dropout, "steps": args.steps, "subset": args.subset,
                                        "log_every": args.log_every, "compile": args.compile}.items() if v is not None}
        self.cfg = dataclasses.replace(TR.PRESETS_TRAIN[preset], **overrides)
        self.metrics: dict = {"device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "cuda": torch.version.cuda, "preset": preset,
                              "config": dataclasses.asdict(self.cfg), "cpu_rehearsal": bool(args.cpu_rehearsal)}
        self.trainer: TR.Trainer | None = None
        self.samples: np.ndarray | None = None

    def save_metrics(self) -> None:
        self.metrics["wall_s"] = round(time.perf_counter() - STARTED, 1)
        D.atomic_write(self.out / "metrics.json", lambda f: f.write(json.dumps(self.metrics, indent=2).encode()))

    def bench(self) -> None:
        res = TR.benchmark(self.cfg, steps=self.args.bench_steps, warmup_steps=self.args.bench_warmup,
                           device=str(self.device))
        self.metrics["benchmark"] = res
        log(f"benchmark: {json.dumps(res)}")

    def load_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode the zips once into a cache keyed by their sha256 (a second call reads the cache)."""
        sources = [Path(p) for p in self.args.data]
        key = hashlib.sha256("".join(sha256(p) for p in sources).encode()).hexdigest()[:16]
        root = Path(self.args.cache) / key
        t0 = time.perf_counter()
        cached = (root / "cifar10-train.npz").exists()
        x, y = D.load_cifar10("train", root=root, source=None if cached else sources, progress=False)
        self.metrics["data"] = {"sources": [p.name for p in sources], "images": len(x), "from_cache": cached,
                                "load_s": round(time.perf_counter() - t0, 1)}
        log(f"data: {len(x)} images ({'cache' if cached else 'decoded'}) in {time.perf_counter() - t0:.1f}s")
        return x, y

    def train(self) -> None:
        x, y = self.load_data()
        run_dir = Path(self.args.run_dir)
        self.trainer = tr = TR.Trainer(self.cfg, x, run_dir, device=self.device, progress=False, labels=y,
                                       overwrite=True)
        deadline = STARTED + 60 * self.args.minutes - self.args.eval_reserve_s
        log(f"train: {TR.count_parameters(tr.model) / 1e6:.2f}M parameters, up to {self.cfg.steps} steps, "
            f"{deadline - time.perf_counter():.0f}s left for training")
        t0 = time.perf_counter()
        last = tr.run(deadline=deadline)
        lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
        self.metrics["train"] = {"steps": tr.step, "images_seen": tr.images_seen, "train_s": round(time.perf_counter() - t0, 1),
                                 "last_log": last, "loss_first": lines[0]["loss"] if lines else None,
                                 "loss_last": lines[-1]["loss"] if lines else None, "save_s": tr.save_s}
        self.plot_loss(lines)
        log(f"train: {tr.step} steps, last {last}")

    def plot_loss(self, lines: list[dict]) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        ax.plot([m["step"] for m in lines], [m["loss"] for m in lines])
        ax.set_xlabel("step")
        ax.set_ylabel("L_simple (window mean)")
        ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(self.out / "loss_curve.png")
        plt.close(fig)

    def sample(self) -> None:
        from ddpm_lab.sample import image_grid, sample_images, save_png
        from ddpm_lab.schedules import NoiseSchedule

        assert self.trainer is not None, "the sample stage needs the train stage in the same call"
        ema = self.trainer.ema.eval()
        schedule = NoiseSchedule.linear(self.cfg.T, self.cfg.beta_1, self.cfg.beta_T)
        t0 = time.perf_counter()
        self.samples = s = sample_images(ema, schedule, self.args.n_samples, batch=self.args.sample_batch, method="ddim",
                                         steps=min(self.args.ddim_steps, self.cfg.T), seed=1,
                                         bf16=self.cfg.bf16, progress=False)
        assert s is not None
        dt = time.perf_counter() - t0
        self.metrics["samples"] = {"n": len(s), "sampler": "ddim", "eta": 0.0, "steps": min(self.args.ddim_steps, self.cfg.T),
                                   "weights": "ema", "sample_s": round(dt, 1)}
        save_png(image_grid(s[:64]), self.out / "samples_grid.png", scale=2)
        for k in range(0, len(s), SAMPLES_PER_FILE):
            np.savez_compressed(self.out / f"samples_{k // SAMPLES_PER_FILE}.npz", images=s[k:k + SAMPLES_PER_FILE])
        log(f"sample: {len(s)} images in {dt:.1f}s")

    def evaluate(self) -> None:
        path = Path(self.args.inception) if self.args.inception else None
        if path is None or not path.is_file():
            why = f"no TF-Inception network file at {path}" if path else "no --inception given"
            self.metrics["fid"] = {"skipped": why}
            log(f"eval: FID/KID skipped: {why}")
            return
        from ddpm_lab import fid as F

        os.environ[F.NETWORK_ENV] = str(path)  # the file carried in (fid checks its size and sha256), not the wheel's
        assert self.trainer is not None and self.samples is not None
        t0 = time.perf_counter()
        f_train = F.cached_features(self.trainer.data.cpu(), Path(self.args.cache), device=self.device,
                                    batch=self.args.fid_batch, progress=False)
        f_gen = F.inception_features(self.samples, device=self.device, batch=self.args.fid_batch, progress=False)
        fid = F.fid_from_features(f_gen, f_train)
        kid = F.kernel_inception_distance(f_gen, f_train, subsets=100, subset_size=min(1000, len(f_gen), len(f_train)))
        self.metrics["fid"] = {**fid, "against": "training images used", "eval_s": round(time.perf_counter() - t0, 1)}
        self.metrics["kid"] = kid
        log(f"eval: FID {fid['fid']:.2f} ({fid['n1']} samples vs {fid['n2']} train), KID {kid['kid']:.4f}")


def cmd_run(args: argparse.Namespace) -> None:
    if args.cpu_rehearsal:  # the same stages at toy scale: seconds on a CPU
        args.steps = args.steps or 8
        args.log_every = args.log_every or 4
        args.n_samples = min(args.n_samples, 16)
        args.ddim_steps = min(args.ddim_steps, 4)
        args.bench_steps, args.bench_warmup = min(args.bench_steps, 2), min(args.bench_warmup, 1)
        args.eval_reserve_s = min(args.eval_reserve_s, 5.0)
        args.device = args.device or "cpu"
    run = Run(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"bench", "train", "sample", "eval"}
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {sorted(unknown)}")
    if ("sample" in stages or "eval" in stages) and "train" not in stages:
        raise SystemExit("error: sample and eval use the model trained in the same call: add the train stage")
    log(f"{run.metrics['device']}, torch {torch.__version__}, stages {stages}, out {run.out}")
    run.save_metrics()
    for stage in ("bench", "train", "sample", "eval"):
        if stage in stages:
            {"bench": run.bench, "train": run.train, "sample": run.sample, "eval": run.evaluate}[stage]()
            run.save_metrics()
    log("done")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stash")
    p.add_argument("files", nargs="+")
    p.add_argument("--stash-dir", default="/root/stash")
    p = sub.add_parser("join")
    p.add_argument("parts", nargs="+")
    p.add_argument("--output", required=True)
    p.add_argument("--sha256", required=True)
    p = sub.add_parser("verify")
    p.add_argument("output")
    p.add_argument("--sha256", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", help="CIFAR-10 image zips (or the tarball)")
    p.add_argument("--cache", default="/root/stash/data", help="decoded-data cache root")
    p.add_argument("--run-dir", default="/root/stash/run")
    p.add_argument("--stages", default="bench,train,sample,eval")
    p.add_argument("--cpu-rehearsal", action="store_true", help="tiny preset, a few steps, seconds on a CPU")
    p.add_argument("--device")
    p.add_argument("--preset", default="cifar10", choices=sorted(TR.PRESETS_TRAIN))
    p.add_argument("--minutes", type=float, default=9.0, help="the whole call's wall-clock budget")
    p.add_argument("--eval-reserve-s", type=float, default=150.0, help="kept from training for sample + eval")
    for name, kind in (("batch", int), ("lr", float), ("warmup", int), ("ema-decay", float), ("dropout", float),
                       ("steps", int), ("subset", int), ("log-every", int)):
        p.add_argument("--" + name, type=kind, default=None)
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bench-steps", type=int, default=30)
    p.add_argument("--bench-warmup", type=int, default=10)
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--sample-batch", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=100)
    p.add_argument("--inception", default="/root/stash/default_1.pt", help="the joined, verified FID network")
    p.add_argument("--fid-batch", type=int, default=200)
    args = ap.parse_args(argv)
    if args.command == "run" and "train" in args.stages and not args.data:
        raise SystemExit("error: the train stage needs --data")
    {"stash": cmd_stash, "join": cmd_join, "verify": lambda a: verify(Path(a.output), a.sha256), "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    main()
