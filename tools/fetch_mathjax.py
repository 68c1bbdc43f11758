"""Bundle MathJax 3 with the book so that its equations render offline (what `make book` runs first).

Jupyter Book loads MathJax from a CDN by default; a reader without network then sees raw TeX. This
fetches the official npm tarball once (checksum-verified against the registry's sha512 integrity,
written atomically, cached in .cache/), and unpacks only the CHTML build and its fonts into
_mathjax/mathjax/, which _config.yml serves as a static path.

Offline: put the tarball anywhere and set MATHJAX_TGZ=/path/to/mathjax-3.2.2.tgz.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
SHA512 = "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / f"mathjax-{VERSION}.tgz"
DEST = ROOT / "_mathjax" / "mathjax"
WANTED = ("package/es5/tex-mml-chtml.js", "package/es5/output/chtml/fonts/")


def sha512_b64(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        if sha512_b64(Path(tmp)) != SHA512:
            raise RuntimeError(f"checksum mismatch for {url}")
        os.replace(tmp, dest)  # atomic: no partial file under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main() -> int:
    if (DEST / "tex-mml-chtml.js").exists():
        return 0
    tgz = Path(os.environ["MATHJAX_TGZ"]) if "MATHJAX_TGZ" in os.environ else CACHE
    if not tgz.exists():
        print(f"fetching MathJax {VERSION} from {URL}", file=sys.stderr)
        try:
            download(URL, tgz)
        except Exception as exc:  # noqa: BLE001 - one clear message for any network or checksum failure
            sys.exit(f"could not fetch MathJax ({exc}).\nDownload {URL} yourself and run again with "
                     f"MATHJAX_TGZ=/path/to/mathjax-{VERSION}.tgz")
    if sha512_b64(tgz) != SHA512:
        sys.exit(f"{tgz} is not MathJax {VERSION} (sha512 mismatch)")
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(WANTED):
                rel = member.name.removeprefix("package/es5/")
                target = DEST / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src:  # type: ignore[union-attr]
                    target.write_bytes(src.read())
    print(f"MathJax {VERSION} unpacked into {DEST.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
