"""Write the Colab install cell into every chapter, pinned to the package's current commit.

    python tools/stamp_colab.py          (what `make stamp` runs; commit the notebooks afterwards)

The first code cell of every chapter installs ``ddpm_lab`` when the notebook runs in Colab and does
nothing elsewhere. It installs from the repository at a fixed commit: the last commit that changed
the package (``ddpm_lab/``, ``pyproject.toml``, ``requirements.txt``). A notebook cannot name the
commit it is itself part of, but it can name that one, and the package there is byte-for-byte the
package of every later commit until the next package change. tests/test_book.py fails when the
package has changed since the stamped commit, so a stale stamp cannot reach main unnoticed.

The HTML book is built with ``repository.branch`` set to the commit it is built from (see
tools/book_config.py), so a page's Colab button opens the notebook of that same commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
REPO = "https://github.com/ddpm-lab/ddpm-lab"
PACKAGE_PATHS = ("ddpm_lab", "pyproject.toml", "requirements.txt")
TEMPLATE = '''\
# Colab: install the book's package at the commit this chapter was written against (a no-op elsewhere).
import sys

if "google.colab" in sys.modules:
    DDPM_LAB_COMMIT = "{commit}"  # written by tools/stamp_colab.py
    %pip install -q "ddpm_lab @ git+{repo}@{{DDPM_LAB_COMMIT}}"'''


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def package_commit() -> str:
    """The last commit that changed the package."""
    return git("log", "-1", "--format=%H", "--", *PACKAGE_PATHS)


def colab_cell(commit: str) -> str:
    return TEMPLATE.format(commit=commit, repo=REPO)


def notebooks() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def main() -> int:
    commit = package_commit()
    changed = 0
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        source = colab_cell(commit)
        tags = cell.metadata.setdefault("tags", [])
        if cell.source != source or "remove-cell" not in tags:
            cell.source = source
            if "remove-cell" not in tags:
                tags.append("remove-cell")  # the HTML book does not show it
            nbformat.write(nb, path)
            changed += 1
    print(f"Colab cells pinned to {commit[:12]}: {changed} notebooks changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
