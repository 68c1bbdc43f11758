"""Execute notebooks in place and store their outputs, reproducibly (what `make notebooks` runs).

Runs each notebook top to bottom in a fresh kernel of this Python, with its own folder as working
directory, then strips volatile metadata (timings) so that a re-run only changes what really changed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tools/execute_notebooks.py NOTEBOOK.ipynb [...]")
    for arg in sys.argv[1:]:
        seconds = execute(Path(arg))
        size_kb = Path(arg).stat().st_size / 1024
        print(f"{arg}: executed in {seconds:.1f} s, {size_kb:.0f} KB")
