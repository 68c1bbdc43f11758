"""The trainer and the sampler under a hostile but realistic user: interrupts, forgotten flags, bad checkpoints,
nonsense settings. Every run here is the tiny-cpu preset on fake images."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab import sample as S
from ddpm_lab import train as TR
from ddpm_lab.train import PRESETS_TRAIN, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_cifar_stack import make_tarball  # noqa: E402

CFG = dataclasses.replace(PRESETS_TRAIN["tiny-cpu"], steps=8, batch=4, log_every=2, ckpt_every=100, subset=None)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def images(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def state_of(tr: Trainer) -> dict:
    """Everything a resumed run must reproduce bit for bit."""
    return {"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "opt": tr.opt.state_dict(),
            "gen": tr.gen.get_state(), "torch_rng": torch.get_rng_state(), "step": tr.step}


def assert_bitwise_equal(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    tr = Trainer(CFG, images(), tmp_path_factory.mktemp("straight"), device="cpu", progress=False)
    tr.run()
    return state_of(tr)


# -- 1. SIGINT: the run stops at a step boundary, saved, and resumes bit for bit ------------------------------
def _interrupt_at(tr: Trainer, where: str, step: int, monkeypatch) -> None:
    """Send this process SIGINT from inside step ``step`` (0-based), at ``where``: before the step's first draw,
    after its draws (in the forward pass), or after the optimizer moved the weights (in the EMA update)."""
    def fire():
        if tr.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    if where == "batch":
        orig_batch = tr.batch
        tr.batch = lambda: (fire(), orig_batch())[1]
    elif where == "forward":
        orig_fwd = tr.forward
        tr.forward = lambda x, t: (fire(), orig_fwd(x, t))[1]
    else:  # after the optimizer moved the weights, in the EMA update
        orig_lerp = torch._foreach_lerp_
        monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: (fire(), orig_lerp(*a, **k))[1])


@pytest.mark.parametrize("where,step", [("batch", 2), ("forward", 3), ("ema", 4), ("forward", 7)])
def test_sigint_anywhere_in_a_step_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, straight, where, step,
                                                                                  monkeypatch):
    tr = Trainer(CFG, images(), tmp_path, device="cpu", progress=False)
    _interrupt_at(tr, where, step, monkeypatch)
    tr.run()
    monkeypatch.undo()
    assert tr.interrupted == "SIGINT" and tr.step == step + 1  # the step in flight was finished, then saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # run() restored the handler
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["step"] == step + 1
    resumed = Trainer(CFG, images(), tmp_path, device="cpu", progress=False)
    resumed.load(tmp_path / "ckpt.pt")
    resumed.run()
    assert resumed.interrupted is None
    assert_bitwise_equal(state_of(resumed), straight)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == sorted({m["step"] for m in lines})  # one history, no repeated steps


def test_a_second_sigint_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path):
    tr = Trainer(dataclasses.replace(CFG, ckpt_every=2), images(), tmp_path, device="cpu", progress=False)
    orig = tr.forward

    def twice(x, t):
        if tr.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return orig(x, t)
    tr.forward = twice
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4  # the half-done step 6 was not saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_save_refuses_the_middle_of_a_step(tmp_path):
    tr = Trainer(CFG, images(), tmp_path, device="cpu", progress=False)
    tr._mid_step = True
    with pytest.raises(RuntimeError, match="middle of a step"):
        tr.save()


def _cli(tmp: Path, run: str, *extra: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    tgz = tmp / "fake.tar.gz"
    if not tgz.exists():
        make_tarball(tgz, n_per_batch=8)
    cmd = [sys.executable, "-m", "ddpm_lab.train", "--preset", "tiny-cpu", "--data", str(tgz), "--root",
           str(tmp / "cache"), "--run-dir", str(tmp / run), "--batch", "4", "--log-every", "1", "--no-progress",
           "--device", "cpu", *extra]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_cli_ctrl_c_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """A real process, a real SIGINT at whatever point the run has reached."""
    steps = "40"
    _cli(tmp_path, "straight", "--steps", steps)
    make_tarball(tmp_path / "fake.tar.gz", n_per_batch=8)
    cmd = [sys.executable, "-m", "ddpm_lab.train", "--preset", "tiny-cpu", "--data", str(tmp_path / "fake.tar.gz"),
           "--root", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "cut"), "--batch", "4", "--log-every", "1",
           "--no-progress", "--device", "cpu", "--steps", steps]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "continue with --resume" in out and "Traceback" not in err
    cut = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert 5 <= cut["step"] < int(steps)
    _cli(tmp_path, "cut", "--resume")
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    for key in ("model", "ema", "opt", "gen", "torch_rng", "step", "images_seen"):
        assert_bitwise_equal(a[key], b[key], key)


# -- 2. A forgotten --resume does not destroy a run -----------------------------------------------------------
def test_starting_over_an_existing_run_needs_resume_or_overwrite(tmp_path):
    _cli(tmp_path, "run", "--steps", "4")
    before = (tmp_path / "run" / "ckpt.pt").read_bytes()
    out = _cli(tmp_path, "run", "--steps", "4", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'run'} already holds a run ({tmp_path / 'run' / 'ckpt.pt'}): continue it with --resume, "
        "or start over with --overwrite"]
    assert (tmp_path / "run" / "ckpt.pt").read_bytes() == before
    _cli(tmp_path, "run", "--steps", "2", "--overwrite")
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["step"] == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # one history: the overwritten run's lines are gone
    with pytest.raises(ValueError, match="already holds a run"):  # the Python API refuses too
        Trainer(CFG, images(), tmp_path / "run", device="cpu", progress=False).run()


def test_resume_drops_log_lines_past_the_checkpoint(tmp_path):
    tr = Trainer(dataclasses.replace(CFG, steps=4, log_every=1), images(), tmp_path, device="cpu", progress=False)
    tr.run()
    with open(tmp_path / "metrics.jsonl", "a") as f:  # what a crash after step 4's checkpoint would leave
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    tr = Trainer(dataclasses.replace(CFG, steps=6, log_every=1), images(), tmp_path, device="cpu", progress=False)
    tr.load(tmp_path / "ckpt.pt")
    tr.run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6] and lines[4]["loss"] != 1.0


# -- 3. Checkpoints load with weights_only=True ---------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran code",))


@pytest.mark.parametrize("kind", ["code", "empty", "truncated", "random", "bare_state_dict", "not_a_dict"])
def test_bad_checkpoints_are_one_line_errors_and_never_run_code(tmp_path, kind):
    path = tmp_path / "run" / "ckpt.pt"
    path.parent.mkdir()
    good = tmp_path / "good"
    Trainer(dataclasses.replace(CFG, steps=1), images(), good, device="cpu", progress=False).run()
    if kind == "code":
        torch.save({"config": {}, "t_convention": "paper", "x": _RunsCode()}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes((good / "ckpt.pt").read_bytes()[:5000])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "bare_state_dict":
        torch.save(torch.load(good / "ckpt.pt", weights_only=True)["model"], path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=str(path)):
        S.load_model(path)
    for cmd in ([sys.executable, "-m", "ddpm_lab.sample", "--ckpt", str(path), "--device", "cpu",
                 "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "s.png")],
                [sys.executable, "-m", "ddpm_lab.train", "--preset", "tiny-cpu", "--run-dir", str(path.parent),
                 "--resume", "--device", "cpu"]):
        out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")
        assert "this pickle ran code" not in out.stdout + out.stderr


# -- 6. --resume keeps the checkpoint's config ------------------------------------------------------------------
def test_resume_uses_the_checkpoints_config_and_refuses_conflicting_flags(tmp_path):
    _cli(tmp_path, "run", "--steps", "2", "--T", "50", "--seed", "3")
    out = _cli(tmp_path, "run", "--resume", "--steps", "4")  # no --T/--seed/--batch: the checkpoint's are used
    assert '"step": 4' in out.stdout
    cfg = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["config"]
    assert (cfg["T"], cfg["seed"], cfg["batch"], cfg["steps"]) == (50, 3, 4, 4)
    for flags, says in [(["--T", "100"], "--T 100 conflicts with the checkpoint's T=50"),
                        (["--batch", "8"], "--batch 8 conflicts with the checkpoint's batch=4"),
                        (["--seed", "0"], "--seed 0 conflicts with the checkpoint's seed=3"),
                        (["--model", "cifar10"], "--model cifar10 conflicts with the checkpoint's model='tiny'")]:
        out = _cli(tmp_path, "run", "--resume", *flags, check=False)
        assert out.returncode == 1 and out.stderr.startswith(f"error: {says}"), out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "ddpm_lab.train", "--preset", "cifar10", "--run-dir",
                          str(tmp_path / "run"), "--resume", "--device", "cpu"], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "--preset cifar10 (model='cifar10') conflicts" in out.stderr
    assert "Traceback" not in out.stderr
    tr = Trainer(dataclasses.replace(CFG, T=50), images(), tmp_path / "api", device="cpu", progress=False)
    with pytest.raises(ValueError, match="trained with T=50, this run has T=100"):
        Trainer(dataclasses.replace(CFG, T=100), images(), tmp_path / "api2", device="cpu",
                progress=False).load(tr.save())


# -- 7. Nonsense flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,says", [
    ("--grad-clip", "-1", "--grad-clip must be a finite number > 0"), ("--ema-decay", "2", "--ema-decay must be in [0, 1)"),
    ("--steps", "-5", "--steps must be an integer >= 1"), ("--subset", "-5", "--subset must be an integer >= 1"),
    ("--warmup", "-3", "--warmup must be an integer >= 0"), ("--minutes", "0", "--minutes must be a number > 0"),
    ("--batch", "0", "--batch must be an integer >= 1"), ("--lr", "nan", "--lr must be a finite number > 0"),
    ("--T", "0", "--T must be an integer >= 1"), ("--beta-1", "0.5", "need 0 < --beta-1 <= --beta-T < 1"),
    ("--log-every", "0", "--log-every must be an integer >= 1")])
def test_nonsense_training_flags_are_refused(tmp_path, flag, value, says):
    out = subprocess.run([sys.executable, "-m", "ddpm_lab.train", "--preset", "tiny-cpu", "--run-dir",
                          str(tmp_path / "run"), flag, value], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith(f"error: {says}"), out.stderr[-1000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


# -- 8. subset is class-balanced --------------------------------------------------------------------------------
def test_subset_is_class_balanced_not_the_first_rows(tmp_path):
    labels = np.repeat(np.arange(10), 8)  # class-sorted, as the image archives are
    imgs = np.broadcast_to(labels[:, None, None, None], (80, 32, 32, 3)).astype(np.uint8).copy()  # pixel = class
    tr = Trainer(dataclasses.replace(CFG, subset=20), imgs, tmp_path, device="cpu", progress=False, labels=labels)
    classes = tr.data[:, 0, 0, 0].tolist()
    assert sorted(classes) == sorted(list(range(10)) * 2)  # two of every class; the first 20 rows hold classes 0-2
    with pytest.raises(ValueError, match="needs the labels"):
        Trainer(dataclasses.replace(CFG, subset=20), imgs, tmp_path / "b", device="cpu", progress=False)


# -- 10. A full disk while saving ----------------------------------------------------------------------------------
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    tr = Trainer(dataclasses.replace(CFG, steps=2), images(), tmp_path, device="cpu", progress=False)
    tr.run()
    before = (tmp_path / "ckpt.pt").read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"x" * 10)  # a partial write, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(TR.torch, "save", full)
    with pytest.raises(OSError, match=r"could not write .*ckpt.pt \(No space left on device\); the previous checkpoint is intact"):
        tr.save()
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not list(tmp_path.glob("*.part"))


# -- 5 and low: the sampling CLI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ck")
    Trainer(dataclasses.replace(CFG, steps=1, T=10), images(), d, device="cpu", progress=False).run()
    return d / "ckpt.pt"


def _sample(ckpt: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ddpm_lab.sample", "--ckpt", str(ckpt), "--device", "cpu", "--no-progress",
           "-n", "2", "--batch", "2", "--steps", "3", "--out", str(tmp / "s.npz"), "--grid", str(tmp / "s.png"), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)


def test_sampling_writes_images_when_all_is_well(ckpt, tmp_path):
    out = _sample(ckpt, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 32, 32, 3)


@pytest.mark.parametrize("extra,says", [(["--eta", "nan"], "eta must be a finite number >= 0, got nan"),
                                        (["-n", "0"], "--num-samples must be >= 1, got 0"),
                                        (["--batch", "0"], "--batch must be >= 1, got 0"),
                                        (["--steps", "11"], "num_steps must be in [1, 10], got 11")])
def test_sampling_cli_refuses_bad_settings_in_one_line(ckpt, tmp_path, extra, says):
    out = _sample(ckpt, tmp_path, *extra)
    assert out.returncode == 1 and out.stderr.strip() == f"error: {says}", out.stderr[-2000:]
    assert not (tmp_path / "s.npz").exists()


def test_sampling_cli_fails_on_non_finite_samples_instead_of_writing_black_images(ckpt, tmp_path):
    ck = torch.load(ckpt, weights_only=True)
    for k in ck["ema"]:
        if k.endswith("conv_out.weight"):
            ck["ema"][k] = torch.full_like(ck["ema"][k], float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    out = _sample(tmp_path / "nan.pt", tmp_path)
    assert out.returncode == 1 and "2 of 2 samples in batch 0 are not finite" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "s.png").exists()


def test_sampling_cli_checks_its_output_path_before_sampling(ckpt, tmp_path):
    (tmp_path / "adir").mkdir()
    out = _sample(ckpt, tmp_path, "--out", str(tmp_path / "adir"))
    assert out.returncode == 1 and out.stderr.strip() == f"error: {tmp_path / 'adir'} is a directory; give a file name"
