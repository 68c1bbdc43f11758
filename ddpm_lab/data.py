"""CIFAR-10 (Krizhevsky 2009) as uint8 arrays, from the official tarball or from a local image archive.

Three ways to the same arrays (N, 32, 32, 3) uint8 and labels (N,) int64, label = index in :data:`CLASSES`:

* the official ``cifar-10-python.tar.gz``: :func:`download` fetches it with a progress bar, checks the
  published MD5 and writes it atomically (a failed download leaves no partial file under the final name);
* a local copy of the tarball anywhere (``source=path``);
* an image archive: a folder, or one or more zip files, holding ``<split>/<class>/<name>.<ext>`` images
  (lossless, e.g. WebP or PNG), such as the offline copy this project is developed with.

Decoded arrays are cached as one file, ``cifar10-<split>.npz`` (images, labels and the images' CIFAR-10 file names),
in the data directory (argument ``root``, else ``$DDPM_LAB_DATA``, else ``~/.cache/ddpm_lab``), so decoding happens
once. Every file is checked before use: the tarball in the data directory against its MD5, the cache by its CRC-32s;
a damaged file gives a one-line error that names it. Images can be picked by their CIFAR-10 file names
(``with_names=True``, :func:`select_by_name`), which are the same in the tarball and in an image archive.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import pickle
import re
import socket
import tarfile
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "DataCorruptError", "DataNotFoundError", "atomic_write", "balanced_indices",
           "data_dir", "download", "file_digest", "load_cifar10", "read_tarball", "read_image_archive",
           "select_by_name", "to_model_space", "to_uint8", "flip_lr", "random_flip"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
Split = Literal["train", "test"]


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is not where it was looked for; the message says how to get it."""


class DataCorruptError(ValueError):
    """A data file is there but damaged (truncated, corrupt, wrong checksum); the one-line message names the file
    and says what to do (delete it, download again, or replace it)."""


def balanced_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices into ``labels``, class-balanced, deterministic and sorted.

    Every class present gets ``n // k`` indices (k = number of classes), the remainder going one each to the
    lowest labels; a class with too few members gives all it has and the rest is shared by the others, so the
    counts are as equal as the class sizes allow. Within a class the picks are evenly spaced over its members
    (in their order in ``labels``). Raises ValueError unless 1 <= n <= len(labels)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(labels):
        raise ValueError(f"n must be an integer in [1, {len(labels)}] (the number of labels), got n={n!r}")
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    sizes = np.array([len(m) for m in members])
    counts = np.zeros(len(classes), dtype=np.int64)
    left = int(n)
    while left:  # fill equally; classes that run out drop out and the rest share what is left
        open_ = np.flatnonzero(counts < sizes)
        share = left // len(open_)
        if share == 0:  # fewer left than open classes: one more each for the lowest labels
            counts[open_[:left]] += 1
            break
        add = np.minimum(share, sizes[open_] - counts[open_])
        counts[open_] += add
        left -= int(add.sum())
    picks = [m[((np.arange(k) + 0.5) * len(m) / k).astype(np.int64)] for m, k in zip(members, counts) if k]
    return np.sort(np.concatenate(picks))


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


def _brief(exc: BaseException) -> str:
    """An exception's message on one line (for messages that must stay one line)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _checked_checksums(md5: str | None, sha256_prefix: str | None) -> tuple[str | None, str | None]:
    """Validate the checksums of :func:`download`: an empty or malformed one would verify nothing."""
    if md5 is None and sha256_prefix is None:
        raise ValueError("download needs a checksum: md5 or sha256_prefix")
    if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
        raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
    if sha256_prefix is not None and not (isinstance(sha256_prefix, str)
                                          and re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256_prefix)):
        raise ValueError(f"sha256_prefix must be 8 to 64 hex digits (the start of the SHA-256), got {sha256_prefix!r}")
    return (md5.lower() if md5 else None), (sha256_prefix.lower() if sha256_prefix else None)


def _matches(path: Path, md5: str | None, sha256_prefix: str | None) -> bool:
    return (md5 is None or file_digest(path, "md5") == md5) and (
        sha256_prefix is None or file_digest(path, "sha256").startswith(sha256_prefix))


STALE_PART_SECONDS = 3600.0  # a temporary file nobody has written to for this long is an orphan


def _part_prefix(dest: Path) -> str:
    """Temporary files are ``<dest>.<host>-<pid>.<random>.part``, so a later call can tell whether the writer lives."""
    return f"{dest.name}.{socket.gethostname()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or os.name != "posix":  # only POSIX has a harmless liveness probe (signal 0)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists
        return True
    return True


def _remove_orphaned_parts(dest: Path, stale_seconds: float = STALE_PART_SECONDS) -> None:
    """Delete ``<dest>.*.part`` files left by a killed writer (SIGKILL/SIGTERM skip the cleanup): those whose writer
    (host and pid, from the name) is gone, and any not written to for ``stale_seconds``. A live download is kept."""
    pattern = re.compile(re.escape(dest.name) + r"\.(?:(.+)-(\d+)\.)?[^.]+\.part")
    host, now = socket.gethostname(), time.time()
    try:
        candidates = list(dest.parent.glob(glob.escape(dest.name) + ".*.part"))
    except OSError:
        return
    for part in candidates:
        match = pattern.fullmatch(part.name)
        if match is None:
            continue
        try:
            stale = now - part.stat().st_mtime > stale_seconds
            dead = match.group(1) == host and not _pid_alive(int(match.group(2)))
            if stale or dead:
                part.unlink()
        except OSError:  # gone already, or not ours to delete: leave it
            pass


def download(url: str, dest: str | os.PathLike[str], md5: str | None = None, progress: bool = True,
             timeout: float = 60.0, sha256_prefix: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` unless a file with the right checksum is already there (a wrong one is replaced).

    Streams into a temporary file beside ``dest`` with a progress bar, checks the MD5 (and/or the leading hex
    digits, at least 8, of the SHA-256, torch.hub's convention), then renames it into place (atomic on one file
    system). On any failure the temporary file is removed and nothing is left under ``dest``; temporary files of a
    download that was killed are removed by the next call. Works for ``file://`` URLs too."""
    md5, sha256_prefix = _checked_checksums(md5, sha256_prefix)
    dest = Path(dest)
    _remove_orphaned_parts(dest)
    if dest.exists() and _matches(dest, md5, sha256_prefix):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_part_prefix(dest), suffix=".part")
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


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch (dicts, lists, bytes, numpy arrays) and nothing else: no pickled code runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _stem(file_name: str) -> str:
    """``aeroplane_s_000004.png`` -> ``aeroplane_s_000004``: the CIFAR-10 name, whatever the image format."""
    return file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name


def _parse_batch(batch: object, path: Path, member: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"member {member} is not a CIFAR-10 batch (no data/labels)")
    data = np.asarray(batch[b"data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not (data.dtype == np.uint8 or (
            np.issubdtype(data.dtype, np.integer) and data.size and 0 <= data.min() and data.max() <= 255)):
        raise ValueError(f"member {member} has data of shape {data.shape} {data.dtype}, expected (N, 3072) uint8")
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if labels.shape != (len(data),) or (labels.size and not (0 <= labels.min() and labels.max() < len(CLASSES))):
        raise ValueError(f"member {member} has {labels.shape} labels for {len(data)} images, or labels outside 0..9")
    names = None
    if b"filenames" in batch:
        names = [_stem(n.decode() if isinstance(n, bytes) else str(n)) for n in batch[b"filenames"]]
        if len(names) != len(data):
            raise ValueError(f"member {member} has {len(names)} file names for {len(data)} images")
    images = data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels, names


def _read_tarball(path: Path, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images, labels, names or None if the tarball has no file names); errors are one line naming ``path``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found")
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels, names = [], [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for member in wanted:
                if member not in members:
                    raise DataNotFoundError(f"{path} has no member {member!r}: not a CIFAR-10 python tarball")
                f = tar.extractfile(members[member])
                assert f is not None
                x, y, n = _parse_batch(_BatchUnpickler(f, encoding="bytes").load(), path, member)
                images.append(x)
                labels.append(y)
                names.append(n)
    except (DataNotFoundError, PermissionError):
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, MemoryError) as exc:
        raise DataCorruptError(f"{path} is corrupt or truncated ({_brief(exc)}); replace it with a good copy of the "
                               f"official {TARBALL} (MD5 {CIFAR10_MD5})") from None
    all_names = None if any(n is None for n in names) else np.asarray([s for n in names for s in n], dtype=str)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), all_names


def read_tarball(path: str | os.PathLike[str], split: Split, with_names: bool = False
                 ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the python-pickle batches of the official tarball: data_batch_1..5 (train) or test_batch, in the
    tarball's order. ``with_names=True`` also returns each image's CIFAR-10 file name without its extension
    (``aeroplane_s_000004``), the name an image archive uses. The batches are unpickled with only numpy arrays
    allowed; a truncated or corrupt tarball raises :class:`DataCorruptError` naming it."""
    images, labels, names = _read_tarball(Path(path), split)
    if not with_names:
        return images, labels
    if names is None:
        raise ValueError(f"{path} has no file names (b'filenames' in its batches): not the official CIFAR-10 tarball")
    return images, labels, names


def _archive_members(sources: Iterable[Path], split: Split) -> list[tuple[str, str, Path, str]]:
    """(class, file name, container, member) for every image of ``split`` in the folders / zips ``sources``, sorted.
    Hidden files (``.DS_Store``) are skipped; the same CIFAR-10 name twice (in any class or source) is an error."""
    found = []
    for src in sources:
        if src.is_dir():
            for p in (src / split).glob("*/*"):
                if p.is_file() and not p.name.startswith("."):
                    found.append((p.parent.name, p.name, src, p.relative_to(src).as_posix()))
        elif src.is_file() and (src.suffix.lower() == ".zip" or zipfile.is_zipfile(src)):
            try:
                with zipfile.ZipFile(src) as zf:
                    listing = zf.namelist()
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
                if isinstance(exc, PermissionError):
                    raise
                raise DataCorruptError(f"{src} is not a readable zip file, it is corrupt or truncated ({_brief(exc)}); "
                                       f"replace it with a good copy") from None
            for m in listing:
                parts = m.split("/")
                if len(parts) == 3 and parts[0] == split and parts[2] and not parts[2].startswith("."):
                    found.append((parts[1], parts[2], src, m))
        elif not src.exists():
            raise DataNotFoundError(f"data source not found: {src}")
        else:
            raise DataNotFoundError(f"{src} is neither a folder nor a zip file")
    seen: dict[str, tuple[Path, str]] = {}
    for _cls, name, src, member in found:
        stem = _stem(name)
        if stem in seen:
            src0, member0 = seen[stem]
            raise ValueError(f"duplicate image {stem!r}: {member0} in {src0} and {member} in {src}; each CIFAR-10 "
                             f"file name may appear once (is a source given twice?)")
        seen[stem] = (src, member)
    return sorted(found)


def read_image_archive(sources: Iterable[str | os.PathLike[str]], split: Split, progress: bool = True,
                       subset: int | None = None, with_names: bool = False
                       ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/<name>.<ext>`` images from folders and/or zip files, sorted by (class, name).
    Every image must be 32x32 RGB; lossless formats give the original pixels. ``subset=n`` decodes only the n
    members :func:`balanced_indices` picks (equal counts per class, evenly spaced by name), for quick demos.
    ``with_names=True`` also returns each image's file name without its extension, as :func:`read_tarball` does.
    A corrupt zip, a file that is not an image, or a name that occurs twice raises a ValueError naming it."""
    from PIL import Image  # only this reader needs Pillow

    sources = [Path(s) for s in sources]
    members = _archive_members(sources, split)
    if not members:
        raise DataNotFoundError(f"no {split}/<class>/<image> members in {[str(s) for s in sources]}")
    unknown = sorted({c for c, *_ in members} - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown class folders {unknown} in {[str(s) for s in sources]}; expected {list(CLASSES)}")
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or not 1 <= subset <= len(members):
            raise ValueError(f"subset must be in [1, {len(members)}], got {subset}")
        all_labels = np.array([CLASSES.index(c) for c, *_ in members])
        members = [members[i] for i in balanced_indices(all_labels, int(subset))]
    images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
    labels = np.empty(len(members), dtype=np.int64)
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for i, (cls, _name, src, member) in enumerate(tqdm(members, disable=not progress, desc=f"decoding {split}")):
            where = str(src / member) if src.is_dir() else f"{member} in {src}"
            if src.is_dir():
                data = (src / member).read_bytes()
            else:
                try:
                    if src not in zips:  # open each zip once (parsing its directory is the slow part)
                        zips[src] = zipfile.ZipFile(src)
                    data = zips[src].read(member)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError) as exc:
                    if isinstance(exc, PermissionError):
                        raise
                    raise DataCorruptError(f"{where} cannot be read, the zip file is corrupt ({_brief(exc)}); "
                                           f"replace {src} with a good copy") from None
            try:
                with Image.open(io.BytesIO(data)) as im:
                    arr = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise ValueError(f"{where} is not a readable image ({_brief(exc)}); remove it from the class "
                                 f"folder or replace it") from None
            if arr.shape != (32, 32, 3):
                raise ValueError(f"{where} is {arr.shape}, expected (32, 32, 3)")
            images[i], labels[i] = arr, CLASSES.index(cls)
    finally:
        for zf in zips.values():
            zf.close()
    if with_names:
        return images, labels, np.asarray([_stem(name) for _c, name, *_ in members], dtype=str)
    return images, labels


def select_by_name(names: Iterable[str], wanted: Iterable[str]) -> np.ndarray:
    """Indices of the file names ``wanted`` (without extension) in ``names``, in the order asked; so images picked by
    name are the same from the tarball and from an archive. Raises ValueError naming a name that is missing."""
    index: dict[str, int] = {}
    for i, name in enumerate(np.asarray(list(names) if not isinstance(names, np.ndarray) else names).tolist()):
        if name in index:
            raise ValueError(f"file name {name!r} occurs twice")
        index[name] = i
    wanted = list(wanted)
    missing = [w for w in wanted if w not in index]
    if missing:
        raise ValueError(f"{len(missing)} of {len(wanted)} file names not found, e.g. {missing[:3]}")
    return np.array([index[w] for w in wanted], dtype=np.int64)


def _cache_path(root_dir: Path, split: str) -> Path:
    return root_dir / f"cifar10-{split}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decoded arrays; the npz's CRC-32s catch damage, the checks below anything else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, names = z["images"], z["labels"], z["names"]
        n = len(images)
        if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3) or labels.dtype != np.int64 or \
                labels.shape != (n,) or names.shape not in ((n,), (0,)) or (n and not (
                    0 <= labels.min() and labels.max() < len(CLASSES))):
            raise ValueError(f"unexpected arrays {images.shape} {images.dtype}, {labels.shape} {labels.dtype}, "
                             f"{names.shape}")
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, PermissionError):
            raise
        raise DataCorruptError(f"the decoded cache {path} is corrupt ({_brief(exc)})") from None
    return images, labels, names


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` by calling ``write(file)`` on a temporary file beside it, then rename it into place (atomic on
    one file system): a crash or a full disk leaves the previous file intact and nothing under the final name.
    Temporary files that a killed writer left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_parts(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_part_prefix(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray, names: np.ndarray | None) -> None:
    """One file (so images, labels and names cannot disagree), written atomically; failing to write it only warns."""
    try:
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels,
                                              names=np.asarray([] if names is None else names, dtype=str)))
    except OSError as exc:
        warnings.warn(f"could not write the CIFAR-10 cache {path} ({_brief(exc)}); the data will be decoded again "
                      f"next time", stacklevel=3)


def _is_tarball(path: Path) -> bool:
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return True
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":  # gzip: a tarball here, and if it is not one, read_tarball says so
                return True
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error):
        return False


def load_cifar10(split: Split = "train", root: str | os.PathLike[str] | None = None,
                 source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                 download_ok: bool = False, progress: bool = True, with_names: bool = False
                 ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` as (images (N, 32, 32, 3) uint8, labels (N,) int64), decoded once and cached.

    ``source``: a tarball path, or folder(s)/zip(s) of images (which must hold all ten classes); if None, the
    cache, else the tarball in the data directory, whose MD5 is checked first; ``download_ok`` downloads it when it
    is missing or fails the check. ``with_names=True`` also returns each image's CIFAR-10 file name (without its
    extension), the same from every source. Raises :class:`DataNotFoundError` naming both ways to get the data, and
    :class:`DataCorruptError` (a ValueError) naming a damaged file and what to do about it."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_dir = data_dir(root)
    cache = _cache_path(root_dir, split)
    if source is None:
        bad_cache: DataCorruptError | None = None
        if cache.exists():
            try:
                images, labels, names = _read_cache(cache)
                return _with_names(images, labels, names if names.size else None, with_names, cache)
            except DataCorruptError as exc:
                bad_cache = exc
        tarball = root_dir / TARBALL
        if bad_cache is not None:
            if not tarball.exists() and not download_ok:
                raise DataCorruptError(f"{bad_cache}: delete it, then load CIFAR-10 again from the tarball "
                                       f"(--download, download_ok=True) or from your copy (--data, source=)")
            warnings.warn(f"{bad_cache}: decoding it again from {tarball}", stacklevel=2)
        if tarball.exists() and (got := _md5(tarball)) != CIFAR10_MD5:
            if not download_ok:
                raise DataCorruptError(
                    f"{tarball} is corrupt or incomplete (MD5 {got}, expected {CIFAR10_MD5}): delete it, or pass "
                    f"--download (load_cifar10(..., download_ok=True)) to fetch it again")
            download(CIFAR10_URL, tarball, CIFAR10_MD5, progress=progress)  # replaces the bad file
        elif not tarball.exists():
            if not download_ok:
                raise DataNotFoundError(
                    f"CIFAR-10 not found in {root_dir}. Either download the official tarball "
                    f"(load_cifar10(..., download_ok=True), or `python -m ddpm_lab.data --download`, which fetches "
                    f"{CIFAR10_URL} and checks MD5 {CIFAR10_MD5}), or point `source=` (CLI: --data) at a local "
                    f"copy: the tarball, or a folder / zip files of <split>/<class>/<name>.png|webp images.")
            download(CIFAR10_URL, tarball, CIFAR10_MD5, progress=progress)
        images, labels, names = _read_tarball(tarball, split)
        origin = tarball
    else:
        paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(s) for s in source]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise DataNotFoundError(f"data source(s) not found: {missing}")
        if len(paths) == 1 and paths[0].is_file() and _is_tarball(paths[0]):
            images, labels, names = _read_tarball(paths[0], split)
            origin = paths[0]
        else:
            images, labels, names = read_image_archive(paths, split, progress=progress, with_names=True)
            absent = [CLASSES[c] for c in range(len(CLASSES)) if not (labels == c).any()]
            if absent:
                raise ValueError(f"no {split} images of class(es) {absent} in {', '.join(map(str, paths))}: an "
                                 f"archive must hold all ten classes ({', '.join(CLASSES)})")
            origin = paths[0]
    _write_cache(cache, images, labels, names)
    return _with_names(images, labels, names, with_names, origin)


def _with_names(images: np.ndarray, labels: np.ndarray, names: np.ndarray | None, with_names: bool, origin: Path):
    if not with_names:
        return images, labels
    if names is None:
        raise ValueError(f"{origin} has no file names for its images (not the official tarball?); "
                         f"load without with_names=True")
    return images, labels, names


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


def main(argv: list[str] | None = None) -> None:
    """python -m ddpm_lab.data [--download] [--data PATH ...] [--root DIR]: fill the cache; errors are one line."""
    import argparse

    ap = argparse.ArgumentParser(description="Fetch or decode CIFAR-10 into the ddpm_lab cache.")
    ap.add_argument("--download", action="store_true", help=f"download {CIFAR10_URL} (MD5-checked)")
    ap.add_argument("--data", nargs="*", help="local tarball, or folder / zip files of images")
    ap.add_argument("--root", help="data directory (default $DDPM_LAB_DATA or ~/.cache/ddpm_lab)")
    args = ap.parse_args(argv)
    for split_name in ("train", "test"):
        try:
            x, y = load_cifar10(split_name, root=args.root, source=args.data, download_ok=args.download)  # type: ignore[arg-type]
        except (DataNotFoundError, ValueError, OSError, EOFError) as exc:  # a plain message, not a traceback
            raise SystemExit(f"error: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        print(f"{split_name}: {x.shape} {x.dtype}, labels {np.bincount(y, minlength=10).tolist()}")


if __name__ == "__main__":
    main()
