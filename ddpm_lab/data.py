"""CIFAR-10 (Krizhevsky 2009) as uint8 arrays, from the official tarball or from a local image archive.

Three ways to the same arrays (N, 32, 32, 3) uint8 and labels (N,) int64, label = index in :data:`CLASSES`:

* the official ``cifar-10-python.tar.gz``: :func:`download` fetches it with a progress bar, checks the
  published MD5 and writes it atomically (a failed download leaves no partial file under the final name);
* a local copy of the tarball anywhere (``source=path``);
* an image archive: a folder, or one or more zip files, holding ``<split>/<class>/<name>.<ext>`` images
  (lossless, e.g. WebP or PNG), such as the offline copy this project is developed with.

Decoded arrays are cached as ``cifar10-<split>-images.npy`` / ``-labels.npy`` in the data directory
(argument ``root``, else ``$DDPM_LAB_DATA``, else ``~/.cache/ddpm_lab``), so decoding happens once.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "DataNotFoundError", "data_dir", "download", "file_digest", "load_cifar10",
           "read_tarball", "read_image_archive", "to_model_space", "to_uint8", "flip_lr", "random_flip"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
Split = Literal["train", "test"]


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where it was looked for; the message says how to get it."""


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``root``, else $DDPM_LAB_DATA, else ~/.cache/ddpm_lab."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("DDPM_LAB_DATA", Path.home() / ".cache" / "ddpm_lab"))


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _matches(path: Path, md5: str | None, sha256_prefix: str | None) -> bool:
    return (md5 is None or file_digest(path, "md5") == md5) and (
        sha256_prefix is None or file_digest(path, "sha256").startswith(sha256_prefix))


def download(url: str, dest: str | os.PathLike[str], md5: str | None = None, progress: bool = True,
             timeout: float = 60.0, sha256_prefix: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right checksum is already there.

    Streams into a temporary file beside ``dest`` with a progress bar, checks the MD5 (and/or the leading hex
    digits of the SHA-256, torch.hub's convention), then renames it into place (atomic on one file system).
    On any failure the temporary file is removed and nothing is left under ``dest``. Works for ``file://``
    URLs too."""
    if md5 is None and sha256_prefix is None:
        raise ValueError("download needs a checksum: md5 or sha256_prefix")
    dest = Path(dest)
    if dest.exists() and _matches(dest, md5, sha256_prefix):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if md5 is not None and (got := _md5(Path(tmp))) != md5:
            raise OSError(f"MD5 mismatch for {url}: expected {md5}, got {got}")
        if sha256_prefix is not None and not (got := file_digest(tmp, "sha256")).startswith(sha256_prefix):
            raise OSError(f"SHA-256 mismatch for {url}: expected {sha256_prefix}..., got {got}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def read_tarball(path: str | os.PathLike[str], split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Read the python-pickle batches of the official tarball: data_batch_1..5 (train) or test_batch."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in names:
            if name not in members:
                raise DataNotFoundError(f"{path} has no member {name!r}: not a CIFAR-10 python tarball")
            f = tar.extractfile(members[name])
            assert f is not None
            batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _archive_members(sources: Iterable[Path], split: Split) -> list[tuple[str, str, Path, str]]:
    """(class, name, container, member) for every image of ``split`` in the folders / zips ``sources``."""
    found = []
    for src in sources:
        if src.is_dir():
            for p in (src / split).glob("*/*"):
                found.append((p.parent.name, p.name, src, str(p.relative_to(src))))
        elif zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as zf:
                for m in zf.namelist():
                    parts = m.split("/")
                    if len(parts) == 3 and parts[0] == split and parts[2]:
                        found.append((parts[1], parts[2], src, m))
        else:
            raise DataNotFoundError(f"{src} is neither a folder nor a zip file")
    return sorted(found)


def read_image_archive(sources: Iterable[str | os.PathLike[str]], split: Split, progress: bool = True,
                       subset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/<name>.<ext>`` images from folders and/or zip files, sorted by (class, name).
    Every image must be 32x32 RGB; lossless formats give the original pixels. ``subset=n`` decodes only n
    evenly spaced members (so every class is represented), for quick demos."""
    from PIL import Image  # only this reader needs Pillow

    members = _archive_members([Path(s) for s in sources], split)
    if not members:
        raise DataNotFoundError(f"no {split}/<class>/<image> members in {[str(s) for s in sources]}")
    if subset is not None:
        if not 1 <= subset <= len(members):
            raise ValueError(f"subset must be in [1, {len(members)}], got {subset}")
        members = [members[i] for i in np.linspace(0, len(members) - 1, subset).round().astype(int)]
    unknown = sorted({c for c, *_ in members} - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown class folders {unknown}; expected {list(CLASSES)}")
    images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(members), dtype=np.int64)
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for i, (cls, _name, src, member) in enumerate(tqdm(members, disable=not progress, desc=f"decoding {split}")):
            if src.is_dir():
                data = (src / member).read_bytes()
            else:
                if src not in zips:  # open each zip once (parsing its directory is the slow part)
                    zips[src] = zipfile.ZipFile(src)
                zf = zips[src]
                data = zf.read(member)
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
            if arr.shape != (32, 32, 3):
                raise ValueError(f"{member} in {src} is {arr.shape}, expected (32, 32, 3)")
            images[i], labels[i] = arr, CLASSES.index(cls)
    finally:
        for zf in zips.values():
            zf.close()
    return images, labels


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_cifar10(split: Split = "train", root: str | os.PathLike[str] | None = None,
                 source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                 download_ok: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` as (images (N, 32, 32, 3) uint8, labels (N,) int64), decoded once and cached.

    ``source``: a tarball path, or folder(s)/zip(s) of images; if None, the tarball in the data directory,
    downloaded first when ``download_ok``. Raises :class:`DataNotFoundError` naming both ways to get the data."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_dir = data_dir(root)
    cache_x = root_dir / f"cifar10-{split}-images.npy"
    cache_y = root_dir / f"cifar10-{split}-labels.npy"
    if source is None and cache_x.exists() and cache_y.exists():
        return np.load(cache_x), np.load(cache_y)
    if source is None:
        tarball = root_dir / TARBALL
        if not tarball.exists():
            if not download_ok:
                raise DataNotFoundError(
                    f"CIFAR-10 not found in {root_dir}. Either download the official tarball "
                    f"(load_cifar10(..., download_ok=True), or `python -m ddpm_lab.data --download`, which fetches "
                    f"{CIFAR10_URL} and checks MD5 {CIFAR10_MD5}), or point `source=` (CLI: --data) at a local "
                    f"copy: the tarball, or a folder / zip files of <split>/<class>/<name>.png|webp images.")
            download(CIFAR10_URL, tarball, CIFAR10_MD5, progress=progress)
        images, labels = read_tarball(tarball, split)
    else:
        paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(s) for s in source]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise DataNotFoundError(f"data source(s) not found: {missing}")
        if len(paths) == 1 and paths[0].is_file() and tarfile.is_tarfile(paths[0]):
            images, labels = read_tarball(paths[0], split)
        else:
            images, labels = read_image_archive(paths, split, progress=progress)
    root_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(cache_x, images)
    _save_atomic(cache_y, labels)
    return images, labels


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 {0..255} -> float in [-1, 1]: x / 127.5 - 1 (Ho et al. 2020, Sec. 3.3). Keeps the layout."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 {0..255}: round((x + 1) * 127.5), clipped; the inverse of :func:`to_model_space` on the grid."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def flip_lr(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip the images of a (B, C, H, W) batch left-right where the boolean mask ``flip`` (B,) is true."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2 (on x's device, no host sync)."""
    return flip_lr(x, torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5)


if __name__ == "__main__":  # python -m ddpm_lab.data [--download] [--data PATH ...] [--root DIR]
    import argparse

    ap = argparse.ArgumentParser(description="Fetch or decode CIFAR-10 into the ddpm_lab cache.")
    ap.add_argument("--download", action="store_true", help=f"download {CIFAR10_URL} (MD5-checked)")
    ap.add_argument("--data", nargs="*", help="local tarball, or folder / zip files of images")
    ap.add_argument("--root", help="data directory (default $DDPM_LAB_DATA or ~/.cache/ddpm_lab)")
    args = ap.parse_args()
    for split_name in ("train", "test"):
        try:
            x, y = load_cifar10(split_name, root=args.root, source=args.data, download_ok=args.download)  # type: ignore[arg-type]
        except DataNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"{split_name}: {x.shape} {x.dtype}, labels {np.bincount(y, minlength=10).tolist()}")
