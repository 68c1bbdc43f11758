"""Training and sampling on several processes (torchrun + DistributedDataParallel), proven on CPU with gloo.

Two processes launched by ``torchrun --nproc_per_node 2`` must take the same steps as one process with the
same global batch and seed. They can differ only by float32 rounding: the loss mean over B/2 images per
rank and the all-reduce average of two gradients add the same numbers in another order than one mean over
B images (the same holds inside the convolution backward, which sums over the batch). Adam then moves every
weight by at most lr per step, so a rounding difference in a gradient changes a weight by a few ulps per
step. Tolerance: ``steps * 8`` ulps of the largest weight. (Measured: 7.5e-9, one ulp, after 6 steps.)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab import data as D
from ddpm_lab import distributed
from ddpm_lab.sample import load_model, sample_images
from ddpm_lab.train import PRESETS_TRAIN, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_cifar_stack import make_tarball  # noqa: E402

STEPS, BATCH = 6, 8  # 40 fake training images: 5 steps per epoch, so the runs cross an epoch boundary
CFG = dataclasses.replace(PRESETS_TRAIN["tiny-cpu"], steps=STEPS, batch=BATCH, log_every=2, ckpt_every=3)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    tgz = tmp / "fake.tar.gz"
    make_tarball(tgz, n_per_batch=8)
    images, _ = D.load_cifar10("train", root=tmp / "cache", source=[tgz])
    straight = Trainer(CFG, images, tmp / "one", device="cpu", progress=False)
    straight.run()
    return {"tmp": tmp, "tgz": tgz, "images": images, "one": tmp / "one" / "ckpt.pt"}


def torchrun(module: str, *args: str, nproc: int = 2) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *args]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def train_args(s: dict, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["--preset", "tiny-cpu", "--data", str(s["tgz"]), "--root", str(s["tmp"] / "cache"), "--run-dir",
            str(run_dir), "--steps", str(steps), "--batch", str(BATCH), "--log-every", "2", "--ckpt-every", "3",
            "--no-progress", "--device", "cpu", *extra]


def max_gap(a: Path, b: Path, key: str = "model") -> tuple[float, float]:
    """The largest |weight difference| between two checkpoints, and the tolerance for that comparison."""
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    gap = max((sa[key][n].float() - sb[key][n].float()).abs().max().item() for n in sa[key])
    largest = max(v.float().abs().max().item() for v in sa[key].values())
    tol = sa["step"] * 8 * torch.finfo(torch.float32).eps * largest
    return gap, tol


def test_each_rank_takes_a_disjoint_slice_of_every_epoch(setup: dict) -> None:
    tr = Trainer(CFG, setup["images"], setup["tmp"] / "idx", device="cpu", progress=False)
    spe = tr.steps_per_epoch
    for world in (2, 4):
        for epoch in range(2):
            seen = [torch.cat([tr.indices(s)[distributed.shard(BATCH, distributed.Dist(r, world))]
                               for s in range(epoch * spe, (epoch + 1) * spe)]) for r in range(world)]
            everything = torch.cat(seen)
            assert len(set(everything.tolist())) == len(everything) == spe * BATCH  # disjoint, no repeats
            # the ranks' slices put together are exactly the one-process batches, in order
            one = torch.cat([tr.indices(s) for s in range(epoch * spe, (epoch + 1) * spe)])
            assert set(one.tolist()) == set(everything.tolist())
    again = Trainer(CFG, setup["images"], setup["tmp"] / "idx2", device="cpu", progress=False)
    assert torch.equal(again.indices(7), tr.indices(7))  # seeded: the same order in a new process
    assert not torch.equal(tr.indices(0), tr.indices(spe))  # a new permutation each epoch


def test_global_batch_must_split_evenly() -> None:
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        distributed.shard(6, distributed.Dist(rank=0, world=4))


def test_two_gloo_processes_take_the_same_steps_as_one(setup: dict) -> None:
    run = setup["tmp"] / "two"
    out = torchrun("ddpm_lab.train", *train_args(setup, run, STEPS))
    assert "2 processes (cpu)" in out and out.count('"step": 6') == 1  # rank 0 alone reports
    for key in ("model", "ema"):
        gap, tol = max_gap(setup["one"], run / "ckpt.pt", key)
        assert gap <= tol, f"{key}: {gap:.3g} > {tol:.3g}"
    # the comparison has teeth: one step less is far outside the tolerance
    three = Trainer(dataclasses.replace(CFG, steps=3), setup["images"], setup["tmp"] / "three", device="cpu",
                    progress=False)
    three.run()
    gap, tol = max_gap(setup["one"], setup["tmp"] / "three" / "ckpt.pt")
    assert gap > 10 * tol  # measured: 1.5e-4, 26 times the tolerance
    # rank 0 wrote the only metrics file, with the loss averaged over ranks: equal to the 1-process log
    one_log = (setup["tmp"] / "one" / "metrics.jsonl").read_text().splitlines()
    two_log = (run / "metrics.jsonl").read_text().splitlines()
    loss = [float(line.split('"loss": ')[1].split(",")[0]) for line in one_log]
    loss2 = [float(line.split('"loss": ')[1].split(",")[0]) for line in two_log]
    assert np.allclose(loss, loss2, rtol=1e-5, atol=0)


def test_checkpoints_resume_under_another_number_of_processes(setup: dict) -> None:
    # 2 processes for 3 steps, then 1 process to the end
    a = setup["tmp"] / "two_then_one"
    torchrun("ddpm_lab.train", *train_args(setup, a, 3))
    resumed = Trainer(CFG, setup["images"], a, device="cpu", progress=False)
    resumed.load(a / "ckpt.pt")
    assert resumed.step == 3
    resumed.run()
    # 1 process for 3 steps, then 2 processes to the end
    b = setup["tmp"] / "one_then_two"
    Trainer(dataclasses.replace(CFG, steps=3), setup["images"], b, device="cpu", progress=False).run()
    torchrun("ddpm_lab.train", *train_args(setup, b, STEPS, "--resume"))
    for run in (a, b):
        for key in ("model", "ema"):
            gap, tol = max_gap(setup["one"], run / "ckpt.pt", key)
            assert gap <= tol, f"{run.name} {key}: {gap:.3g} > {tol:.3g}"
        assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == STEPS


def test_sampling_on_two_processes_gives_the_same_samples(setup: dict) -> None:
    out = setup["tmp"] / "samples2.npz"
    torchrun("ddpm_lab.sample", "--ckpt", str(setup["one"]), "--num-samples", "10", "--batch", "3", "--steps", "4",
             "--no-progress", "--device", "cpu", "--out", str(out), "--grid", str(setup["tmp"] / "grid.png"))
    model, schedule = load_model(setup["one"])
    one = sample_images(model, schedule, 10, batch=3, method="ddim", steps=4, progress=False)
    two = np.load(out)["images"]
    assert two.shape == (10, 32, 32, 3)
    assert np.array_equal(one, two)  # batch k has its own seed: bit-identical for any number of processes
    other = sample_images(model, schedule, 10, batch=3, method="ddim", steps=4, seed=1, progress=False)
    assert not np.array_equal(one, other)


BPD_SCRIPT = """
import json, sys
import numpy as np
import torch
from ddpm_lab import distributed, metrics
from ddpm_lab.sample import eps_model_of, load_model
metrics.NOISE_BLOCK = 2
d, device = distributed.init("cpu")
model, schedule = load_model(sys.argv[1])
images = np.load(sys.argv[2])
r = metrics.bits_per_dim_vlb(eps_model_of(model, bf16=False), schedule, images, batch=2, progress=False, dist=d)
if d.main:
    open(sys.argv[3], "w").write(json.dumps(r))
else:
    assert r is None
distributed.close(d)
"""


def test_bits_per_dim_on_two_processes_equals_one(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from ddpm_lab import metrics
    from ddpm_lab.sample import eps_model_of

    tmp = setup["tmp"]
    images = setup["images"][:7]  # blocks of 2, 2, 2, 1: rank 0 takes blocks 0 and 2, rank 1 takes 1 and 3
    np.save(tmp / "bpd_images.npy", images)
    (tmp / "bpd.py").write_text(BPD_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(tmp / "bpd.py"),
           str(setup["one"]), str(tmp / "bpd_images.npy"), str(tmp / "bpd.json")]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads((tmp / "bpd.json").read_text())
    monkeypatch.setattr(metrics, "NOISE_BLOCK", 2)
    model, schedule = load_model(setup["one"])
    one = metrics.bits_per_dim_vlb(eps_model_of(model, bf16=False), schedule, images, batch=2, progress=False)
    assert two["n"] == one["n"] == 7
    # the same images get the same noise; the per-image sums are added in another order
    assert two["bits_per_dim"] == pytest.approx(one["bits_per_dim"], rel=1e-6)
    assert np.allclose(two["terms_bits_per_dim"], one["terms_bits_per_dim"], rtol=1e-6)
    assert two["se"] == pytest.approx(one["se"], rel=1e-5)
