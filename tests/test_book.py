"""The book's plumbing: every chapter's Colab install cell, and the TOC.

(The rendered pages themselves are checked in a browser by tools/check_book.py, run by
`make check-book`; the notation and the check index have their own tests.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import stamp_colab  # noqa: E402

TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [e["file"] for part in TOC["parts"] for e in part["chapters"] if (ROOT / f"{e['file']}.ipynb").exists()]


def first_code_cell(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code")


def stamped_commit(source: str) -> str:
    line = next(ln for ln in source.splitlines() if "DDPM_LAB_COMMIT =" in ln)
    return line.split('"')[1]


def test_every_notebook_is_a_chapter_in_the_toc() -> None:
    on_disk = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "book").glob("*.ipynb")}
    assert on_disk == set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_cell_is_first_hidden_and_current(chapter: str) -> None:
    cell = first_code_cell(ROOT / f"{chapter}.ipynb")
    assert "remove-cell" in cell.metadata.get("tags", []), "the install cell is not shown in the HTML book"
    commit = stamped_commit(cell.source)
    assert cell.source == stamp_colab.colab_cell(commit), "run `make stamp`: the install cell was edited by hand"


def test_colab_cells_pin_the_package_of_this_commit() -> None:
    """All chapters name one commit, and the package there is the package at HEAD."""
    commits = {stamped_commit(first_code_cell(ROOT / f"{c}.ipynb").source) for c in CHAPTERS}
    assert len(commits) == 1, f"chapters pin different commits: {commits}"
    commit = commits.pop()
    diff = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *stamp_colab.PACKAGE_PATHS],
                          cwd=ROOT, capture_output=True, text=True)
    assert diff.returncode == 0, (f"the package changed since {commit[:12]}, which the Colab cells install: "
                                  f"run `make stamp` and commit ({diff.stderr.strip()})")


class _FakeShell:
    """Records the line magics a cell runs, expanding {names} from the cell's namespace as IPython does."""

    def __init__(self, namespace: dict) -> None:
        self.namespace, self.calls = namespace, []

    def run_line_magic(self, name: str, line: str) -> None:
        self.calls.append((name, line.format(**self.namespace)))


def run_install_cell(source: str, in_colab: bool) -> list[tuple[str, str]]:
    code = TransformerManager().transform_cell(source)
    namespace: dict = {}
    shell = _FakeShell(namespace)
    namespace["get_ipython"] = lambda: shell
    saved = sys.modules.pop("google.colab", None)
    if in_colab:
        sys.modules["google.colab"] = types.ModuleType("google.colab")
    try:
        exec(code, namespace)
    finally:
        sys.modules.pop("google.colab", None)
        if saved is not None:
            sys.modules["google.colab"] = saved
    return shell.calls


def test_colab_cell_installs_in_colab_only() -> None:
    source = stamp_colab.colab_cell("0123456789abcdef0123456789abcdef01234567")
    assert run_install_cell(source, in_colab=False) == []
    calls = run_install_cell(source, in_colab=True)
    assert len(calls) == 1 and calls[0][0] == "pip"
    spec = calls[0][1].split('"')[1]
    req = Requirement(spec)  # a valid PEP 508 direct reference
    assert req.name == "ddpm_lab"
    assert req.url == f"git+{stamp_colab.REPO}@0123456789abcdef0123456789abcdef01234567"


def test_wrong_package_commit_is_caught() -> None:
    """The pin check has teeth: the commit before the last package change has a different package."""
    last = stamp_colab.package_commit()
    parent = subprocess.run(["git", "rev-parse", f"{last}^"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "diff", "--quiet", parent, "HEAD", "--", *stamp_colab.PACKAGE_PATHS], cwd=ROOT)
    assert diff.returncode == 1


CHECK_LINE = re.compile(r"\b(OK|FAILED)(\s+\([^\n]*\))?\s*$|fails as it must")


def visible_check_lines(path: Path) -> list[str]:
    """Check lines (a CheckResult's 'OK'/'FAILED' verdicts) in the stored output of a cell that the HTML book shows
    unfolded: the book shows a check group as one 'Checked:' sentence, its comparisons one click away."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        if tags & {"hide-output", "remove-output", "remove-cell"}:
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        found += [f"cell {i}: {line.strip()}" for line in text.splitlines() if CHECK_LINE.search(line)]
    return found


def test_the_check_line_detector_sees_a_check(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(check)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="mean: 1 vs 1 (|gap| 0 <= tol 1, 5 SE) OK\n")]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert len(visible_check_lines(tmp_path / "x.ipynb")) == 1
    cell.metadata["tags"] = ["hide-input", "hide-output"]
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert visible_check_lines(tmp_path / "x.ipynb") == []


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_check_line_is_shown_outside_a_fold(chapter: str) -> None:
    lines = visible_check_lines(ROOT / f"{chapter}.ipynb")
    assert not lines, f"{len(lines)} visible check lines; fold their cells (tags hide-input, hide-output): {lines[:5]}"


import word_count  # noqa: E402

NUMBERED = [c for c in CHAPTERS if re.match(r"book/\d\d_", c)]


@pytest.mark.parametrize("chapter", NUMBERED)
def test_chapter_reads_as_a_lesson(chapter: str) -> None:
    # about 2,500 words of main text (folds not counted) and at least 4 figures a reader sees without a click
    stats = word_count.chapter_stats(ROOT / f"{chapter}.ipynb")
    assert stats["words"] <= word_count.MAX_WORDS, f"{stats['words']} words of main text (at most {word_count.MAX_WORDS})"
    assert stats["figures"] >= word_count.MIN_FIGURES, f"{stats['figures']} visible figures"


def test_word_count_sees_folds() -> None:
    md = ("One two three.\n\n```{prf:proof}\n:class: dropdown\nfour five six seven\n```\n\n"
          ":::{dropdown} Aside\neight nine\n:::\n\n```{prf:theorem} Title\nten eleven\n```\n\n$$ a + b $$\n\n$x$ twelve")
    seen, folded = word_count.visible_text(md)
    assert word_count.count_words(seen) == 7  # One two three, ten eleven, $x$, twelve (a directive's title line is not counted)
    assert word_count.count_words(folded) == 6


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_directives_open(chapter: str) -> None:
    # "```{dropdown} A `name`" opens nothing (a backtick fence's title cannot hold a backtick): use ::: there
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    bad = [line for cell in nb.cells if cell.cell_type == "markdown" for line in cell.source.splitlines()
           if re.match(r"`{3,}\{[\w:-]+\}.*`", line)]
    assert not bad, bad


def test_word_count_ignores_a_fence_that_opens_nothing() -> None:
    seen, folded = word_count.visible_text("```{dropdown} A `name`\none two\n```\n")
    assert folded == "" and word_count.count_words(seen) >= 2
