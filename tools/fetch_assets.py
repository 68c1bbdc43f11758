"""Bundle the book's JavaScript so that it works offline (what `make book` runs first).

Jupyter Book loads MathJax, and myst-nb loads RequireJS and the ipywidgets HTML manager, from CDNs. A
reader without network then sees raw TeX and empty widget cells. This fetches the official npm
tarballs once (each verified against the registry's sha512 integrity, written atomically, cached in
.cache/) and unpacks only the files the pages load into _offline/, which _config.yml serves as a
static path (its contents land in _build/html/_static/).

Offline: put the tarballs in a folder and set NPM_TARBALLS=/path/to/folder (file names as in the
registry, e.g. mathjax-3.2.2.tgz).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
DEST = ROOT / "_offline"  # static/ -> _build/html/_static/, extra/ -> _build/html/ (see _config.yml)
FONTS = (".woff2", ".woff", ".ttf", ".eot", ".svg")


@dataclass(frozen=True)
class Asset:
    name: str  # npm package
    version: str
    sha512: str  # the registry's "integrity" field, without the "sha512-" prefix
    wanted: tuple[str, ...]  # path prefixes inside the tarball ("package/...")
    strip: str  # prefix removed from a member's path
    into: str  # folder under _offline/
    marker: str  # a file whose presence means "already unpacked"

    @property
    def tarball(self) -> str:
        return f"{self.name.split('/')[-1]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.tarball}"


ASSETS = (
    Asset("mathjax", "3.2.2",
          "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
          ("package/es5/tex-mml-chtml.js", "package/es5/output/chtml/fonts/"), "package/es5/", "static/mathjax",
          "tex-mml-chtml.js"),
    Asset("requirejs", "2.3.7",
          "DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
          ("package/require.js",), "package/", "static/widgets", "require.js"),
    # The version myst-nb 1.x loads by default; dist/embed-amd.js bundles the base, controls and output
    # widgets. Its icon fonts are requested relative to the page, so they go to book/@jupyter-widgets/...
    Asset("@jupyter-widgets/html-manager", "1.0.6",
          "+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
          ("package/dist/embed-amd.js",), "package/dist/", "static/widgets", "embed-amd.js"),
)


def sha512_b64(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def download(url: str, dest: Path, sha512: str) -> None:
    """Stream ``url`` to ``dest``; verify the sha512; rename into place only when it matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        if sha512_b64(Path(tmp)) != sha512:
            raise RuntimeError(f"checksum mismatch for {url}")
        os.replace(tmp, dest)  # atomic: no partial file under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def target(asset: Asset, member: tarfile.TarInfo) -> Path | None:
    """Where a tarball member goes under _offline/, or None to skip it."""
    if not member.isfile():
        return None
    if member.name.startswith(asset.wanted):
        return DEST / asset.into / member.name.removeprefix(asset.strip)
    if asset.name == "@jupyter-widgets/html-manager" and member.name.startswith("package/dist/") \
            and member.name.endswith(FONTS):  # icon fonts, requested relative to the chapter pages
        return DEST / "extra" / "book" / asset.name / member.name.removeprefix("package/")
    return None


def unpack(asset: Asset) -> None:
    out = DEST / asset.into
    if (out / asset.marker).exists():
        return
    local = os.environ.get("NPM_TARBALLS")
    tgz = Path(local) / asset.tarball if local else CACHE / asset.tarball
    if not tgz.exists():
        print(f"fetching {asset.name} {asset.version} from {asset.url}", file=sys.stderr)
        try:
            download(asset.url, tgz, asset.sha512)
        except Exception as exc:  # noqa: BLE001 - one clear message for any network or checksum failure
            sys.exit(f"could not fetch {asset.name} ({exc}).\nDownload {asset.url} into a folder yourself and "
                     f"run again with NPM_TARBALLS=/path/to/that/folder")
    if sha512_b64(tgz) != asset.sha512:
        sys.exit(f"{tgz} is not {asset.name} {asset.version} (sha512 mismatch)")
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            dest = target(asset, member)
            if dest is not None:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src:  # type: ignore[union-attr]
                    dest.write_bytes(src.read())
    print(f"{asset.name} {asset.version} unpacked into {out.relative_to(ROOT)}", file=sys.stderr)


def main() -> int:
    for asset in ASSETS:
        unpack(asset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
