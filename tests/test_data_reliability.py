"""ddpm_lab.data under bad inputs: corrupt tarballs, zips and caches, non-images, duplicates, missing classes,
killed downloads; class-balanced subsets; and images picked by their CIFAR-10 file names, identical from the
tarball and from an image archive."""

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ddpm_lab import data as D


# -- fakes: a tarball with file names, and the same images as an archive ------------------------------
def fake_split(n, seed):
    """n random images with labels covering every class, and CIFAR-like file names (unique per seed)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    rng.shuffle(y)
    names = [f"{D.CLASSES[c]}_s_{seed:02d}{i:04d}" for i, c in enumerate(y)]
    return x, y, names


def make_tarball(path: Path, n_per_batch=12, with_names=True):
    """A fake cifar-10-python.tar.gz: data_batch_1..5 and test_batch, each batch in its own (shuffled) order."""
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            x, y, names = fake_split(n_per_batch, seed=i)
            batch = {b"batch_label": name.encode(), b"labels": y.tolist(),
                     b"data": x.transpose(0, 3, 1, 2).reshape(n_per_batch, -1)}
            if with_names:
                batch[b"filenames"] = [f"{s}.png".encode() for s in names]
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def png(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, split, x, y, names, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for img, c, name in zip(x, y, names):
            zf.writestr(f"{split}/{D.CLASSES[c]}/{name}.png", png(img))
    return path


def make_folder(root: Path, split, x, y, names):
    for img, c, name in zip(x, y, names):
        (root / split / D.CLASSES[c]).mkdir(parents=True, exist_ok=True)
        (root / split / D.CLASSES[c] / f"{name}.png").write_bytes(png(img))
    return root


def fake_test_split(n=12):
    """The images of make_tarball's test_batch (seed 5)."""
    return fake_split(n, seed=5)


def truncate(path: Path, keep: float = 0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def flip_byte(path: Path, at: float = 0.6):
    blob = bytearray(path.read_bytes())
    blob[int(len(blob) * at)] ^= 0xFF
    path.write_bytes(bytes(blob))


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# -- item 8: class-balanced subsets ----------------------------------------------------------------------
def test_balanced_indices_gives_equal_counts_sorted_and_deterministic():
    labels = np.repeat(np.arange(10), 100)                       # class-sorted, like the archive
    idx = D.balanced_indices(labels, 50)
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert idx.tolist() == sorted(set(idx.tolist())) and idx.dtype.kind == "i"
    np.testing.assert_array_equal(idx, D.balanced_indices(labels, 50))
    assert idx[:5].tolist() == [10, 30, 50, 70, 90]             # evenly spaced within the class
    rng = np.random.default_rng(0)
    shuffled = rng.integers(0, 10, 5000)
    counts = np.bincount(shuffled[D.balanced_indices(shuffled, 512)], minlength=10)
    assert counts.sum() == 512 and counts.max() - counts.min() <= 1
    small = np.array([0] * 2 + [1] * 10 + [2] * 10)              # a class smaller than its share
    assert np.bincount(small[D.balanced_indices(small, 10)]).tolist() == [2, 4, 4]
    assert D.balanced_indices(small, len(small)).tolist() == list(range(len(small)))


@pytest.mark.parametrize("n", [0, -5, 23])
def test_balanced_indices_rejects_n_out_of_range(n):
    with pytest.raises(ValueError, match=rf"n={n}\b"):
        D.balanced_indices(np.arange(22) % 3, n)


def test_archive_subset_is_balanced_indices_of_the_sorted_archive(tmp_path):
    x, y, names = fake_split(40, seed=7)
    make_folder(tmp_path, "test", x, y, names)
    all_x, all_y = D.read_image_archive([tmp_path], "test", progress=False)
    sub_x, sub_y = D.read_image_archive([tmp_path], "test", progress=False, subset=20)
    pick = D.balanced_indices(all_y, 20)
    np.testing.assert_array_equal(sub_x, all_x[pick])
    assert np.bincount(sub_y, minlength=10).tolist() == [2] * 10


# -- item 9: a corrupt tarball or cache in the data directory ----------------------------------------------
@pytest.fixture
def official(tmp_path, monkeypatch):
    """A fake 'official' tarball served from a file:// URL, with its MD5 as the published one."""
    (tmp_path / "server").mkdir()
    good = make_tarball(tmp_path / "server" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(D, "CIFAR10_URL", good.as_uri())
    monkeypatch.setattr(D, "CIFAR10_MD5", hashlib.md5(good.read_bytes()).hexdigest())
    return good


@pytest.mark.parametrize("damage", [truncate, flip_byte])
def test_a_corrupt_tarball_in_the_data_dir_is_verified_and_refused(tmp_path, official, damage):
    root = tmp_path / "data"
    root.mkdir()
    tarball = root / D.TARBALL
    tarball.write_bytes(official.read_bytes())
    damage(tarball)
    with pytest.raises((ValueError, D.DataNotFoundError)) as excinfo:
        D.load_cifar10("train", root=root, progress=False)
    one_line_error(excinfo, str(tarball), "delete", "--download")


def test_download_ok_repairs_a_corrupt_tarball(tmp_path, official):
    root = tmp_path / "data"
    root.mkdir()
    (root / D.TARBALL).write_bytes(official.read_bytes()[:1000])
    x, y = D.load_cifar10("test", root=root, download_ok=True, progress=False)
    assert (root / D.TARBALL).read_bytes() == official.read_bytes()
    np.testing.assert_array_equal(x, fake_test_split()[0])


@pytest.mark.parametrize("damage", [truncate, flip_byte])
def test_a_corrupt_cache_is_detected(tmp_path, official, damage):
    root = tmp_path / "data"
    want = D.load_cifar10("test", root=root, source=official, progress=False)[0]
    caches = sorted(root.glob("cifar10-test*"))
    assert caches
    for cache in caches:
        damage(cache, 0.6)
    with pytest.raises((ValueError, D.DataNotFoundError)) as excinfo:   # nothing to rebuild it from
        D.load_cifar10("test", root=root, progress=False)
    msg = one_line_error(excinfo, "delete")
    assert any(str(c) in msg for c in caches), msg
    (root / D.TARBALL).write_bytes(official.read_bytes())              # with the tarball there: rebuilt
    with pytest.warns(UserWarning, match="cache"):
        got = D.load_cifar10("test", root=root, progress=False)[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(D.load_cifar10("test", root=root, progress=False)[0], want)


# -- item 10: corrupt inputs give one-line errors that name the file ----------------------------------------
def test_a_truncated_tarball_as_source_names_the_file(tmp_path):
    tgz = make_tarball(tmp_path / "copy.tar.gz")
    truncate(tgz, 0.7)
    with pytest.raises(ValueError) as excinfo:
        D.load_cifar10("train", root=tmp_path / "cache", source=tgz, progress=False)
    one_line_error(excinfo, str(tgz), "corrupt")


@pytest.mark.parametrize("damage", ["truncated", "bad member"])
def test_a_corrupt_zip_names_the_file(tmp_path, damage):
    x, y, names = fake_test_split()
    zpath = make_zip(tmp_path / "test.zip", "test", x, y, names)
    if damage == "truncated":
        truncate(zpath, 0.8)
    else:  # one byte of one member's data: its CRC-32 no longer matches
        blob = bytearray(zpath.read_bytes())
        with zipfile.ZipFile(zpath) as zf:
            info = zf.infolist()[3]
        blob[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF
        zpath.write_bytes(bytes(blob))
    with pytest.raises(ValueError) as excinfo:
        D.load_cifar10("test", root=tmp_path / "cache", source=zpath, progress=False)
    one_line_error(excinfo, str(zpath), "corrupt")


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_a_non_image_file_in_a_class_folder_names_the_file(tmp_path, container):
    x, y, names = fake_test_split()
    folder = make_folder(tmp_path / "imgs", "test", x, y, names)
    (folder / "test" / "cat" / "notes.txt").write_text("not an image")
    source = folder
    if container == "zip":
        source = tmp_path / "imgs.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(folder).as_posix())
    with pytest.raises(ValueError) as excinfo:
        D.load_cifar10("test", root=tmp_path / "cache", source=source, progress=False)
    one_line_error(excinfo, "notes.txt", str(source))


def test_the_data_cli_prints_one_line_errors(tmp_path):
    tgz = make_tarball(tmp_path / "copy.tar.gz")
    truncate(tgz, 0.7)
    x, y, names = fake_test_split()
    folder = make_folder(tmp_path / "imgs", "test", x, y, names)
    (folder / "test" / "cat" / "notes.txt").write_text("not an image")
    env = dict(os.environ, PYTHONPATH=str(Path(D.__file__).parents[1]))
    for source in (tgz, folder):
        r = subprocess.run([sys.executable, "-m", "ddpm_lab.data", "--data", str(source), "--root", str(tmp_path / "c")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(source) in lines[0], r.stderr


# -- item 11: the same images by file name, from the tarball or from an archive -------------------------------
def test_tarball_and_archive_give_identical_images_for_the_same_names(tmp_path):
    tgz = make_tarball(tmp_path / "cifar-10-python.tar.gz")
    x, y, names = fake_test_split()
    zpath = make_zip(tmp_path / "test.zip", "test", x, y, names)
    folder = make_folder(tmp_path / "folder", "test", x, y, names)
    routes = {
        "tarball": D.load_cifar10("test", root=tmp_path / "c1", source=tgz, with_names=True, progress=False),
        "zip": D.load_cifar10("test", root=tmp_path / "c2", source=zpath, with_names=True, progress=False),
        "folder": D.read_image_archive([folder], "test", progress=False, with_names=True),
        "tarball, read directly": D.read_tarball(tgz, "test", with_names=True),
        "tarball, from the cache": D.load_cifar10("test", root=tmp_path / "c1", with_names=True, progress=False),
    }
    wanted = [names[7], names[0], names[3]]
    ref_x = x[[7, 0, 3]]
    for route, (images, labels, got_names) in routes.items():
        assert sorted(got_names.tolist()) == sorted(names), route
        idx = D.select_by_name(got_names, wanted)
        np.testing.assert_array_equal(images[idx], ref_x, err_msg=route)
        assert labels[idx].tolist() == y[[7, 0, 3]].tolist(), route
        # chapter 14's rule: sort by class, then by file name; take evenly spaced positions
        order = np.lexsort((got_names, labels))
        pick = order[np.linspace(0, len(order) - 1, 5).round().astype(int)]
        np.testing.assert_array_equal(images[pick], routes["zip"][0][np.lexsort((routes["zip"][2], routes["zip"][1]))][
            np.linspace(0, len(order) - 1, 5).round().astype(int)], err_msg=route)
    with pytest.raises(ValueError, match="no_such_image"):
        D.select_by_name(routes["zip"][2], ["no_such_image"])


def test_chapter_11_picks_its_images_by_name_from_either_source():
    import json

    nb = json.loads((Path(__file__).parents[1] / "book" / "14_cifar10.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "with_names=True" in code and "subset=N_DEMO" not in code
    for cell in nb["cells"]:  # no stored output depends on which source the images came from
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", ""))
            assert "offline copy" not in text and "official tarball" not in text, text


# -- low: killed downloads, empty checksums, duplicate or incomplete archives -------------------------------------
def test_orphaned_part_files_are_cleaned_on_the_next_call(tmp_path):
    payload = tmp_path / "src.bin"
    payload.write_bytes(b"ddpm" * 1000)
    md5 = hashlib.md5(payload.read_bytes()).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    old = out / "file.bin.q1w2e3r4.part"                       # any leftover not written to for a long time
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = out / f"file.bin.{D.socket.gethostname()}-{int(dead.stdout)}.a1b2c3d4.part"  # its writer is gone
    killed.write_bytes(b"half")
    live = out / f"file.bin.{D.socket.gethostname()}-{os.getpid()}.z9y8x7w6.part"  # a download still running
    live.write_bytes(b"half")
    other = out / "other.bin.q1w2e3r4.part"                    # someone else's file: not ours to touch
    other.write_bytes(b"half")
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    D.download(payload.as_uri(), out / "file.bin", md5, progress=False)
    assert not old.exists() and not killed.exists()
    assert live.exists() and other.exists()
    old.write_bytes(b"half")                                   # also when the file is already there
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    D.download(payload.as_uri(), out / "file.bin", md5, progress=False)
    assert not old.exists()


@pytest.mark.parametrize("kwargs", [{"sha256_prefix": ""}, {"md5": ""}, {"sha256_prefix": "xyz12345"},
                                    {"md5": "abc"}])
def test_empty_or_malformed_checksums_are_rejected(tmp_path, kwargs):
    payload = tmp_path / "src.bin"
    payload.write_bytes(b"ddpm")
    with pytest.raises(ValueError, match="md5|sha256_prefix"):
        D.download(payload.as_uri(), tmp_path / "out.bin", progress=False, **kwargs)
    assert not (tmp_path / "out.bin").exists()


def test_duplicate_images_across_sources_are_rejected(tmp_path):
    x, y, names = fake_test_split()
    a = make_zip(tmp_path / "a.zip", "test", x, y, names)
    b = make_folder(tmp_path / "b", "test", x[:1], y[:1], names[:1])   # one name again, in a folder
    for sources in ([a, a], [a, b]):
        with pytest.raises(ValueError) as excinfo:
            D.read_image_archive(sources, "test", progress=False)
        one_line_error(excinfo, "duplicate", names[0])


def test_an_archive_missing_a_class_is_rejected(tmp_path):
    x, y, names = fake_test_split()
    keep = y != D.CLASSES.index("frog")
    zpath = make_zip(tmp_path / "no_frogs.zip", "test", x[keep], y[keep], [n for n, k in zip(names, keep) if k])
    with pytest.raises(ValueError) as excinfo:
        D.load_cifar10("test", root=tmp_path / "cache", source=zpath, progress=False)
    one_line_error(excinfo, "frog", str(zpath))


def test_orphaned_cache_part_files_are_cleaned_too(tmp_path):
    tgz = make_tarball(tmp_path / "copy.tar.gz")
    root = tmp_path / "data"
    root.mkdir()
    old = root / "cifar10-test.npz.q1w2e3r4.part"                # a cache write killed long ago
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    D.load_cifar10("test", root=root, source=tgz, progress=False)
    assert not old.exists() and not list(root.glob("*.part"))


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_tarball_batch_that_would_run_code_is_refused(tmp_path, capsys):
    tgz = tmp_path / "evil.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        blob = pickle.dumps({b"data": _RunsCode(), b"labels": [0]})
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(ValueError) as excinfo:
        D.load_cifar10("test", root=tmp_path / "cache", source=tgz, progress=False)
    one_line_error(excinfo, str(tgz), "not allowed")
    assert "this pickle ran code" not in capsys.readouterr().out
