"""The CIFAR-10 stack on CPU: U-Net size and shapes, data readers and download, trainer checkpoint/resume."""

import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lab import data as D
from ddpm_lab.train import PRESETS_TRAIN, Trainer, main
from ddpm_lab.unet import PRESETS, UNet, count_parameters


# -- U-Net ----------------------------------------------------------------------------------------
def test_cifar10_unet_has_the_papers_35_7M_parameters():
    assert abs(count_parameters(UNet(PRESETS["cifar10"])) - 35.7e6) < 0.1e6


def test_unet_shapes_channels_last_and_bf16():
    net = UNet(PRESETS["tiny"])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 1000])
    assert net(x, t).shape == x.shape
    net = net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x.contiguous(memory_format=torch.channels_last), t)
    assert y.shape == x.shape and torch.isfinite(y.float()).all()
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        net(torch.randn(2, 3, 16, 16), t)


def test_unet_learns_a_step():
    """The zero-initialised output layer must still receive gradient, so one step changes the output."""
    torch.manual_seed(0)
    net = UNet(PRESETS["tiny"])
    x, t = torch.randn(4, 3, 32, 32), torch.randint(1, 1001, (4,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = net(x, t).detach()
    (net(x, t) - x).square().mean().backward()
    opt.step()
    assert not torch.equal(before, net(x, t).detach())


# -- data -----------------------------------------------------------------------------------------
def fake_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def make_tarball(path: Path, n_per_batch=4):
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            x, y = fake_images(n_per_batch, seed=i)
            blob = pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(n_per_batch, -1), b"labels": y.tolist()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_tarball_reader_and_cache(tmp_path):
    tgz = tmp_path / "fake.tar.gz"
    make_tarball(tgz)
    x, y = D.load_cifar10("train", root=tmp_path / "cache", source=tgz, progress=False)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (20,)
    np.testing.assert_array_equal(x[:4], fake_images(4, seed=0)[0])  # NCHW rows -> NHWC, exactly
    x2, _ = D.load_cifar10("train", root=tmp_path / "cache", progress=False)  # from the .npy cache
    np.testing.assert_array_equal(x, x2)


def test_image_archive_reader_zip_and_folder_are_lossless(tmp_path):
    from PIL import Image

    x, _ = fake_images(6)
    classes = ["cat", "dog", "airplane", "cat", "truck", "dog"]
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, (img, cls) in enumerate(zip(x, classes)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="WEBP", lossless=True)
            zf.writestr(f"test/{cls}/img_{i}.webp", buf.getvalue())
            (tmp_path / "folder" / "test" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / "folder" / "test" / cls / f"img_{i}.png")
    for source in (zpath, tmp_path / "folder"):
        got, labels = D.read_image_archive([source], "test", progress=False)
        order = sorted(range(6), key=lambda i: (classes[i], f"img_{i}"))
        np.testing.assert_array_equal(got, x[order])
        assert labels.tolist() == [D.CLASSES.index(classes[i]) for i in order]


def test_missing_data_error_names_both_ways(tmp_path):
    with pytest.raises(D.DataNotFoundError, match=r"(?s)download.*c58f30108f718f92721af3b95e74349a.*source="):
        D.load_cifar10("train", root=tmp_path)
    with pytest.raises(D.DataNotFoundError, match="not found"):
        D.load_cifar10("train", root=tmp_path, source=tmp_path / "nope.zip")


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    payload = tmp_path / "src.bin"
    payload.write_bytes(b"ddpm" * 1000)
    good = hashlib.md5(payload.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    D.download(payload.as_uri(), dest, good, progress=False)
    assert dest.read_bytes() == payload.read_bytes()
    bad_dest = tmp_path / "out" / "bad.bin"
    with pytest.raises(OSError, match="MD5 mismatch"):
        D.download(payload.as_uri(), bad_dest, "0" * 32, progress=False)
    assert not bad_dest.exists() and not list((tmp_path / "out").glob("*.part"))


def test_scaling_round_trip_and_flip():
    u = torch.arange(256, dtype=torch.uint8)
    x = D.to_model_space(u)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(D.to_uint8(x), u)
    with pytest.raises(ValueError, match="uint8"):
        D.to_model_space(x)
    imgs = torch.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)
    flipped = D.random_flip(imgs, torch.Generator().manual_seed(0))
    for a, b in zip(imgs, flipped):
        assert torch.equal(b, a) or torch.equal(b, a.flip(-1))


# -- trainer --------------------------------------------------------------------------------------
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    images, _ = fake_images(64)
    cfg = PRESETS_TRAIN["tiny-cpu"]
    import dataclasses

    cfg = dataclasses.replace(cfg, steps=6, log_every=2, ckpt_every=3, batch=4)
    straight = Trainer(cfg, images, tmp_path / "a", device="cpu", progress=False)
    straight.run()
    first = Trainer(dataclasses.replace(cfg, steps=3), images, tmp_path / "b", device="cpu", progress=False)
    first.run()
    resumed = Trainer(cfg, images, tmp_path / "b", device="cpu", progress=False)
    resumed.load(tmp_path / "b" / "ckpt.pt")
    assert resumed.step == 3
    resumed.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 3, 4, 6]
    assert {"loss", "lr", "img_per_s", "images_seen"} <= set(lines[-1])


def test_cli_trains_from_a_local_tarball(tmp_path, capsys):
    tgz = tmp_path / "fake.tar.gz"
    make_tarball(tgz)
    main(["--preset", "tiny-cpu", "--data", str(tgz), "--root", str(tmp_path / "cache"), "--run-dir",
          str(tmp_path / "run"), "--steps", "4", "--batch", "4", "--log-every", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert (tmp_path / "run" / "ckpt.pt").exists() and (tmp_path / "run" / "config.json").exists()


def test_archive_subset_is_class_balanced(tmp_path):
    from PIL import Image

    x, _ = fake_images(20)
    for i, img in enumerate(x):
        cls = D.CLASSES[i % 2]
        (tmp_path / "test" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "test" / cls / f"{i:02d}.png")
    _, labels = D.read_image_archive([tmp_path], "test", progress=False, subset=4)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="subset must be in"):
        D.read_image_archive([tmp_path], "test", progress=False, subset=0)


def test_cli_without_data_exits_with_a_plain_message(tmp_path):
    with pytest.raises(SystemExit, match="error: CIFAR-10 not found"):
        main(["--preset", "tiny-cpu", "--root", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--no-progress"])


# -- the paper's t in the trainer, and checkpoints that say so ----------------------------------------
def _tiny_trainer(tmp_path, steps=2):
    import dataclasses

    images, _ = fake_images(16)
    cfg = dataclasses.replace(PRESETS_TRAIN["tiny-cpu"], steps=steps, log_every=1, ckpt_every=100, batch=4, T=5)
    return Trainer(cfg, images, tmp_path / "run", device="cpu", progress=False)


def test_trainer_draws_t_uniformly_from_1_to_T(tmp_path):
    tr = _tiny_trainer(tmp_path)
    seen = []
    net = tr.forward
    tr.forward = lambda x, t: (seen.append(t.clone()), net(x, t))[1]
    x0 = tr.batch()
    for _ in range(100):
        tr.loss(x0)
    t = torch.cat(seen)  # 400 draws from {1..5}
    assert int(t.min()) == 1 and int(t.max()) == 5


def test_checkpoint_records_the_t_convention_and_old_ones_are_refused(tmp_path, capsys):
    from ddpm_lab.sample import load_model, main as sample_main
    from ddpm_lab.train import T_CONVENTION, read_checkpoint

    tr = _tiny_trainer(tmp_path)
    tr.run()
    path = tmp_path / "run" / "ckpt.pt"
    ck = read_checkpoint(path)
    assert ck["t_convention"] == T_CONVENTION == "paper"
    model, sched = load_model(path)
    assert sched.T == 5
    old = dict(ck)
    del old["t_convention"]  # what an older ddpm_lab wrote: its network took t - 1
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"t_convention=None, expected 'paper'.*retrain"):
        load_model(tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"t_convention=None"):
        _tiny_trainer(tmp_path / "b").load(tmp_path / "old.pt")
    with pytest.raises(SystemExit, match=r"^error: .*t_convention=None"):
        sample_main(["--ckpt", str(tmp_path / "old.pt"), "--device", "cpu", "--no-progress"])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    from ddpm_lab.sample import load_model

    bad = tmp_path / "evil.pt"
    torch.save({"config": {}, "t_convention": "paper", "x": _RunsCode()}, bad)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(bad)
    assert "this pickle ran code" not in capsys.readouterr().out
