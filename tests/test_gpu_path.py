"""The trainer's CUDA code path, checked on a CPU: the EMA warm-up ramp, no host syncs in the step (fused Adam),
the new flags, and the GPU run script's CPU rehearsal (tools/gpu_run.py). Tiny preset, fake images, seconds."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab import schedules
from ddpm_lab import train as TR
from ddpm_lab.train import PRESETS_TRAIN, Trainer

CFG = dataclasses.replace(PRESETS_TRAIN["tiny-cpu"], steps=12, batch=4, log_every=100, ckpt_every=100, subset=None)


def images(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# -- EMA warm-up ---------------------------------------------------------------------------------
def residual_closed_form(rho: float, n: int, ramp: bool) -> float:
    """prod_{k<n} rho_k written out: with the ramp, the first m updates (those with (1 + k)/(10 + k) < rho) have
    rho_k = (1 + k)/(10 + k), whose product telescopes to 9! m! / (m + 9)! = 1 / C(m + 9, 9); the other n - m
    updates have rho. Without it, rho^n."""
    if not ramp:
        return rho ** n
    m = sum(1 for k in range(n) if (1 + k) / (10 + k) < rho)
    return rho ** (n - m) / math.comb(m + 9, 9)


def test_the_closed_form_is_the_product_of_the_ramp():
    for rho in (0.5, 0.9, 0.9999):
        for n in (0, 1, 7, 8, 9, 40, 200):
            prod = 1.0
            for k in range(n):
                prod *= 1.0 - max(1.0 - rho, 9.0 / (10.0 + k))  # 1 - (1 - rho_k), rho_k = min(rho, (1+k)/(10+k))
            assert math.isclose(residual_closed_form(rho, n, True), prod, rel_tol=1e-12), (rho, n)


@pytest.mark.parametrize("ramp, rho", [(True, 0.5), (False, 0.9)])
def test_the_weight_of_the_initial_weights_in_the_ema_is_the_product_of_the_decays(tmp_path, ramp, rho):
    """Two runs that differ only in the EMA's starting value (the second's is the first's + 1): the EMA never feeds
    back into training, so after n steps their EMAs differ by exactly the initial value's weight, prod_{k<n} rho_k.
    rho = 0.5 leaves the ramp after m = 8 of the 12 updates, so both pieces of the closed form are exercised."""
    cfg = dataclasses.replace(CFG, ema_decay=rho, ema_warmup=ramp)
    a = Trainer(cfg, images(), tmp_path / "a", device="cpu", progress=False)
    b = Trainer(cfg, images(), tmp_path / "b", device="cpu", progress=False)
    with torch.no_grad():
        for p in b.ema.parameters():
            p.add_(1.0)
    n = cfg.steps
    for _ in range(n):
        a.train_step()
        b.train_step()
    diff = torch.cat([(q - p).flatten() for p, q in zip(a.ema.parameters(), b.ema.parameters())])
    expected = residual_closed_form(rho, n, ramp)
    assert expected > 1e-6  # measurable in float32
    # float32: each of the n lerps rounds both EMAs by half an ulp of their size, so the difference is exact to
    # n ulps of the largest EMA entry (+1 for the shifted one)
    size = 1.0 + max(p.abs().max().item() for p in b.ema.parameters())
    torch.testing.assert_close(diff, torch.full_like(diff, expected), rtol=0,
                               atol=n * size * torch.finfo(torch.float32).eps)


def test_the_ramp_is_off_by_default_so_existing_runs_do_not_change():
    assert TR.TrainConfig().ema_warmup is False and PRESETS_TRAIN["tiny-cpu"].ema_warmup is False
    assert TR.TrainConfig().dropout is None


def test_resume_keeps_the_ramp_bitwise_and_old_checkpoints_still_resume(tmp_path):
    cfg = dataclasses.replace(CFG, steps=6, ema_warmup=True, ema_decay=0.9)
    straight = Trainer(cfg, images(), tmp_path / "straight", device="cpu", progress=False)
    straight.run()
    first = Trainer(dataclasses.replace(cfg, steps=3), images(), tmp_path / "resumed", device="cpu", progress=False)
    first.run()
    resumed = Trainer(cfg, images(), tmp_path / "resumed", device="cpu", progress=False)
    resumed.load(tmp_path / "resumed" / "ckpt.pt")
    assert resumed.step == 3 and resumed.ema_decay_at(resumed.step) == min(0.9, 4 / 13)
    resumed.run()
    for p, q in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(p, q)
    # a run without the ramp cannot be resumed with it (it would change the steps it takes) ...
    with pytest.raises(ValueError, match="ema_warmup"):
        Trainer(dataclasses.replace(cfg, ema_warmup=False), images(), tmp_path / "x", device="cpu",
                progress=False).load(tmp_path / "resumed" / "ckpt.pt")
    # ... and a checkpoint written before the new fields existed resumes with their defaults
    ck = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    for name in ("ema_warmup", "dropout"):
        del ck["config"][name]
    ck["config"]["steps"] = 6
    torch.save(ck, tmp_path / "old.pt")
    old = Trainer(dataclasses.replace(cfg, ema_warmup=False), images(), tmp_path / "old", device="cpu", progress=False)
    old.load(tmp_path / "old.pt")
    assert old.step == 6


def test_dropout_flag_reaches_the_network(tmp_path):
    tr = Trainer(dataclasses.replace(CFG, dropout=0.3), images(), tmp_path, device="cpu", progress=False)
    rates = {m.p for m in tr.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}
    with pytest.raises(ValueError, match="--dropout"):
        dataclasses.replace(CFG, dropout=1.5)


def test_the_recipe_flags_exist(capsys):
    with pytest.raises(SystemExit):
        TR.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--ema-warmup", "--no-ema-warmup", "--dropout", "--warmup", "--minutes"):
        assert flag in out


# -- host syncs ----------------------------------------------------------------------------------
class SyncCounter:
    """Counts Tensor.item and Tensor.__bool__ calls (each one reads a value on the host: on CUDA, a sync), by the
    function that made them, while ``active``."""

    NAMES = ("item", "__bool__")

    def __init__(self, monkeypatch) -> None:
        self.active = False
        self.calls: collections.Counter = collections.Counter()
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counting(t, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    caller = sys._getframe(1).f_code
                    self.calls[(_name, caller)] += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)

    def total(self, exempt: tuple = ()) -> int:
        return sum(c for (_, code), c in self.calls.items() if code not in exempt)


def test_the_cuda_step_makes_no_host_syncs(tmp_path, monkeypatch):
    """The step as CUDA runs it: fused Adam, the loss summed on the device and read only at a log boundary.

    One exemption, by function: ``schedules.check_t`` reads t's range on the host for CPU tensors only (its guard
    is ``t.device.type == "cpu"``; checked below with a non-CPU tensor), so it runs here and never on CUDA."""
    counter = SyncCounter(monkeypatch)
    n = 6
    cfg = dataclasses.replace(CFG, steps=n, log_every=n, ckpt_every=100, ema_warmup=True)
    tr = Trainer(cfg, images(), tmp_path, device="cpu", progress=False, fused=True)
    assert tr.opt.defaults["fused"] is True
    step = tr.train_step

    def measured_step():
        counter.active = True
        try:
            return step()
        finally:
            counter.active = False

    tr.train_step = measured_step
    tr.run()  # n steps, one log boundary (after the last step, outside the measured steps)
    assert tr.step == n
    exempt = (schedules.check_t.__code__,)
    where = {f"{name} in {code.co_name} ({code.co_filename}:{code.co_firstlineno})": c
             for (name, code), c in counter.calls.items() if code not in exempt}
    per_step = counter.total(exempt) / n
    print(f"host syncs per step on the CUDA path: {per_step:g} "
          f"(+ {counter.total() - counter.total(exempt)} in the CPU-only t range check over {n} steps)")
    assert per_step == 0, where
    # the exempt check really is CPU-only: on another device type it reads nothing
    counter.calls.clear()
    counter.active = True
    schedules.check_t(torch.ones(4, dtype=torch.long, device="meta"), 10)
    counter.active = False
    assert counter.total() == 0


def test_the_unfused_cpu_adam_does_sync_so_the_counter_sees_syncs(tmp_path, monkeypatch):
    """The counter is not blind: the plain CPU Adam reads each parameter's step count with .item()."""
    counter = SyncCounter(monkeypatch)
    tr = Trainer(CFG, images(), tmp_path, device="cpu", progress=False, fused=False)
    counter.active = True
    tr.train_step()
    counter.active = False
    assert counter.total((schedules.check_t.__code__,)) >= len(list(tr.model.parameters()))


# -- the wall-clock budget -----------------------------------------------------------------------
def test_a_budget_already_spent_trains_no_step_but_saves(tmp_path):
    tr = Trainer(dataclasses.replace(CFG, steps=1000, log_every=2), images(), tmp_path, device="cpu", progress=False)
    tr.run(deadline=TR.time.perf_counter() - 1.0)
    assert tr.step == 0 and (tmp_path / "ckpt.pt").exists() and tr.save_s is not None


def test_the_run_ends_with_its_final_save_before_the_deadline(tmp_path):
    tr = Trainer(dataclasses.replace(CFG, steps=10**6, log_every=2), images(), tmp_path, device="cpu",
                 progress=False)
    budget = 3.0
    deadline = TR.time.perf_counter() + budget
    tr.run(deadline=deadline)
    end = TR.time.perf_counter()
    assert tr.step >= 2 and tr.step % 2 == 0  # stopped at a log boundary, after some windows
    assert end <= deadline + 0.5, f"overran the budget by {end - deadline:.2f} s"  # the slack: a window's jitter


def test_minutes_counts_from_the_start_of_the_process():
    start = TR.process_start()
    now = TR.time.perf_counter()
    assert start <= now and now - start < 3600
    assert now - start > 0.05  # this process imported torch and ran pytest before getting here


# -- tools/gpu_run.py: the runbook's stages, rehearsed end to end on a CPU ---------------------------
def _gpu_run():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "gpu_run.py"
    spec = importlib.util.spec_from_file_location("gpu_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_zip(path: Path, per_class: int = 4) -> None:
    import io
    import zipfile

    from PIL import Image

    from ddpm_lab.data import CLASSES

    rng = np.random.default_rng(1)
    with zipfile.ZipFile(path, "w") as zf:
        for cls in CLASSES:
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                zf.writestr(f"train/{cls}/{cls}_{i}.png", buf.getvalue())


def test_gpu_run_cpu_rehearsal_end_to_end(tmp_path, capsys):
    G = _gpu_run()
    # stash two parts of a carried file, join them, verify the sha256 (and refuse a wrong one)
    blob = np.random.default_rng(0).bytes(10_000)
    whole = tmp_path / "net.pt"
    whole.write_bytes(blob)
    (tmp_path / "p-aa").write_bytes(blob[:6000])
    (tmp_path / "p-ab").write_bytes(blob[6000:])
    stash = tmp_path / "stash"
    G.main(["stash", str(tmp_path / "p-aa"), str(tmp_path / "p-ab"), "--stash-dir", str(stash)])
    digest = G.sha256(whole)
    G.main(["join", str(stash / "p-aa"), str(stash / "p-ab"), "--output", str(stash / "net.pt"), "--sha256", digest])
    assert (stash / "net.pt").read_bytes() == blob
    with pytest.raises(SystemExit, match="sha256"):
        G.main(["verify", str(stash / "net.pt"), "--sha256", "0" * 64])
    with pytest.raises(SystemExit, match="sha256"):  # a wrong join never gets the final name
        G.main(["join", str(stash / "p-ab"), str(stash / "p-aa"), "--output", str(stash / "bad.pt"), "--sha256", digest])
    assert not (stash / "bad.pt").exists()
    # the run: decode, benchmark, train on a budget, sample with the EMA weights, evaluate (skipped: no network)
    zpath = tmp_path / "train-0.zip"
    _fake_zip(zpath)
    out = tmp_path / "out"
    argv = ["run", "--cpu-rehearsal", "--out", str(out), "--data", str(zpath), "--cache", str(tmp_path / "cache"),
            "--run-dir", str(tmp_path / "run"), "--inception", str(tmp_path / "absent.pt"), "--batch", "8",
            "--minutes", "5", "--ema-warmup"]
    G.main(argv)
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == 8 and m["config"]["ema_warmup"] is True and m["data"]["images"] == 40
    assert m["data"]["from_cache"] is False
    assert m["benchmark"]["fp32_eager"]["img_per_s"] > 0
    assert m["samples"]["n"] == 16 and m["samples"]["weights"] == "ema"
    assert "absent.pt" in m["fid"]["skipped"]
    for name in ("loss_curve.png", "samples_grid.png", "samples_0.npz"):
        assert (out / name).stat().st_size > 0
    with np.load(out / "samples_0.npz") as z:
        assert z["images"].shape == (16, 32, 32, 3) and z["images"].dtype == np.uint8
    assert "FID/KID skipped" in capsys.readouterr().out
    # a second call reads the decoded cache instead of decoding the zip again
    G.main(argv[:1] + ["--stages", "train"] + argv[1:])
    assert json.loads((out / "metrics.json").read_text())["data"]["from_cache"] is True
