"""Generate book/check_index.md: an index of every check in the book, read from the stored notebook outputs.

    python tools/check_index.py            write book/check_index.md
    python tools/check_index.py --check    exit 1 if book/check_index.md differs from what would be written

A *check* is one line that a ``ddpm_lab.checks.CheckResult`` printed into a code cell's stored stream
output, in one of the formats of ``CheckResult.__str__`` (and ``_OneSided.__str__``)::

    <name>: <estimate> vs <expected> (|gap| <gap> <= tol <tol>, <how>) OK
    <name>: <estimate> vs <expected> (|gap| <gap> > tol <tol>, <how>) FAILED
    <name>: equal to rounding (<how>) OK
    <name>: <value> >= <lower> - slack (margin <m>, slack <s>, <how>) OK|FAILED

A cell may print a note in parentheses after the verdict (``... OK (bound up to 2^3 x 64 ulps)``). A FAILED
line is a deliberate demonstration that a wrong formula fails the same check (the cell asserts that it
failed). A *bare assert* is a line of a code cell whose stripped text starts with ``assert ``. The first
code cell of every notebook (the Colab install cell) is skipped.

Each row gets the equation labels (``eq-...``) that the markdown before its cell references ({eq}`...`) or
defines (``$$ ... $$ (eq-...)``): first the markdown between the previous code cell and this one, else the
nearest earlier markdown with a label in the same section. Headings (levels 1-3, outside code fences) end a
section: text before a heading never names the checks after it. The chapters and their order come from
_toc.yml. The output is deterministic: the same notebooks give a byte-identical page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import re
import sys
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
PAGE = BOOK / "check_index.md"
TOC = ROOT / "_toc.yml"

ASSERT_WIDTH = 100  # bare asserts are shortened to about this many characters

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
_VERDICT_NOTE = r"(?P<verdict>OK|FAILED)(?:\s+\((?P<note>[^\n]*)\))?"
_TWO_SIDED = re.compile(
    rf"(?P<name>.*\S): (?P<estimate>{_NUM}) vs (?P<expected>{_NUM}) "
    rf"\(\|gap\| (?P<gap>{_NUM}) (?P<cmp><=|>) tol (?P<tol>{_NUM}), (?P<how>.+)\) {_VERDICT_NOTE}"
)
_ROUNDING = re.compile(  # a rounding-level check prints this only when it passed
    r"(?P<name>.*\S): equal to rounding \((?P<how>.+)\) (?P<verdict>OK)(?:\s+\((?P<note>[^\n]*)\))?")
_ONE_SIDED = re.compile(
    rf"(?P<name>.*\S): (?P<estimate>{_NUM}) >= (?P<expected>{_NUM}) - slack "
    rf"\(margin (?P<gap>{_NUM}), slack (?P<tol>{_NUM}), (?P<how>.+)\) {_VERDICT_NOTE}"
)
# The name is greedy: a name may contain ': ' and ' vs ', and the comparison is the last one on the line
# (what follows the name is fully determined, so the line is parsed from its right end).

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})")
_EQ_REF = re.compile(r"\{eq\}`(?:[^`<]*<)?(eq-[^`>\s]+)>?`")
_EQ_DEF = re.compile(r"\$\$[ \t]*\((eq-[^)\s]+)\)")
_ROLE = re.compile(r"\{[\w:-]+\}`(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|$~&#!])")

FAILED_TEXT = "wrong formula: fails as it must"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def parse_check_line(line: str) -> dict[str, str | None] | None:
    """The fields of one printed check line, or None if the line is not exactly a check.

    Returns ``kind`` ("two-sided", "rounding" or "one-sided"), ``name``, ``estimate``, ``expected``,
    ``gap``, ``tol`` (numbers as printed, None for a rounding check), ``how``, ``verdict`` ("OK" or
    "FAILED") and ``note`` (text in parentheses after the verdict, or None). A line whose comparison
    contradicts its verdict ("<=" with FAILED, ">" with OK) is not a check.
    """
    text = line.strip()
    m = _TWO_SIDED.fullmatch(text)
    if m:
        if (m["cmp"] == "<=") != (m["verdict"] == "OK"):
            return None
        return {"kind": "two-sided", "name": m["name"], "estimate": m["estimate"], "expected": m["expected"],
                "gap": m["gap"], "tol": m["tol"], "how": m["how"], "verdict": m["verdict"], "note": m["note"]}
    m = _ROUNDING.fullmatch(text)
    if m:
        return {"kind": "rounding", "name": m["name"], "estimate": None, "expected": None, "gap": None,
                "tol": None, "how": m["how"], "verdict": m["verdict"], "note": m["note"]}
    m = _ONE_SIDED.fullmatch(text)
    if m:
        return {"kind": "one-sided", "name": m["name"], "estimate": m["estimate"], "expected": m["expected"],
                "gap": m["gap"], "tol": m["tol"], "how": m["how"], "verdict": m["verdict"], "note": m["note"]}
    return None


def looks_like_check(line: str) -> bool:
    """A line that ends like a check (a verdict, possibly with a note) but may not parse as one."""
    return re.search(r"\b(OK|FAILED)(\s+\([^\n]*\))?\s*$", line) is not None


def assert_parts(line: str) -> tuple[str, str]:
    """(asserted expression, trailing comment) of one ``assert`` line; the message after the comma is dropped.

    A multi-line assert has only its first line here: then the expression is that line's text.
    """
    text = line.strip()
    comment = ""
    code = text
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text + "\n").readline):
            if tok.type == tokenize.COMMENT:
                comment, code = tok.string.lstrip("#").strip(), text[: tok.start[1]].rstrip()
                break
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    try:
        node = ast.parse(code).body[0]
        if isinstance(node, ast.Assert):
            return (ast.get_source_segment(code, node.test) or "").strip(), comment
    except SyntaxError:
        pass
    return code[len("assert "):].strip(), comment


def _shorten(text: str, width: int = ASSERT_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One check (a printed line) or one bare assert, with where it is in the book."""

    chapter: str  # notebook stem, e.g. "03_forward_process"
    cell: int  # index of the code cell in the notebook (all cells counted from 0)
    section: str  # nearest preceding level-2/3 heading, as written ("" before the first one)
    labels: tuple[str, ...]  # equation labels, e.g. ("eq-forward-marginal",)
    kind: str  # "check" (passed), "failed" (a wrong formula failing), or "assert"
    what: str  # what it compares, plain text (not yet escaped)
    tolerance: str
    result: str
    first_line: str = ""  # the first line of the cell's source, for reports
    comment: str = ""  # a bare assert's trailing comment


@dataclass
class Chapter:
    """A notebook of the TOC: its title, number (None if unnumbered) and rows."""

    stem: str
    title: str
    number: int | None
    rows: list[Row] = field(default_factory=list)
    unparsed: list[tuple[int, str]] = field(default_factory=list)  # (cell, line) ending like a check


def _chunks(markdown: str) -> list[tuple[str | None, int, str]]:
    """Split markdown at headings outside code fences: (heading text or None, level, body) in order."""
    chunks: list[tuple[str | None, int, str]] = [(None, 0, "")]
    fence: str | None = None
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
            elif mark.startswith(fence):
                fence = None
        h = _HEADING.match(line) if fence is None else None
        if h and len(h.group(1)) <= 3:
            chunks.append((h.group(2), len(h.group(1)), line + "\n"))
        else:
            head, level, body = chunks[-1]
            chunks[-1] = (head, level, body + line + "\n")
    return chunks


def _labels(text: str) -> list[str]:
    """The equation labels referenced or defined in ``text``, in order of first appearance."""
    found = sorted([(m.start(), m.group(1)) for m in _EQ_REF.finditer(text)]
                   + [(m.start(), m.group(1)) for m in _EQ_DEF.finditer(text)])
    return list(dict.fromkeys(label for _, label in found))


def _equation_labels(chunks: list[tuple[int, int, list[str]]], last_code: int) -> list[str]:
    """The labels that name the checks of a code cell, from the markdown chunks before it.

    First every label in the markdown since the previous code cell (``last_code``), back to a level-1/2
    heading at most (a level-3 heading such as "### Check 2" is crossed: the check belongs to the
    section). If there is none, the nearest earlier chunk with a label, stopping at a heading (whose
    own chunk is still looked at); a level-3 heading crossed in the first step also stops the search.
    """
    collected: list[str] = []
    crossed_heading = False
    for cell_index, level, labels in reversed(chunks):
        if cell_index > last_code:
            collected = labels + collected
            if level in (1, 2):
                break
            crossed_heading = crossed_heading or level == 3
            continue
        if collected or crossed_heading:
            break
        if labels:
            collected = labels
            break
        if level:
            break
    return collected


def _clean_title(title: str) -> str:
    """A heading as plain MyST: roles become their text; math stays."""
    return _ROLE.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), title).strip()


def _stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def _format_check(fields: dict[str, str | None], context: str | None) -> tuple[str, str, str, str]:
    """(kind, what, tolerance, result) of a parsed check line; ``context`` prefixes an indented name."""
    name = fields["name"] or ""
    if context and not name.startswith(context):
        name = f"{context}: {name}"
    if fields["kind"] == "rounding":
        what, tolerance = f"{name}: equal to rounding", str(fields["how"])
        detail = ""
    elif fields["kind"] == "one-sided":
        what = f"{name}: {fields['estimate']} >= {fields['expected']} - slack"
        tolerance = f"slack {fields['tol']} ({fields['how']})"
        detail = f" (margin {fields['gap']})"
    else:
        what = f"{name}: {fields['estimate']} vs {fields['expected']}"
        tolerance = f"tol {fields['tol']} ({fields['how']})"
        detail = f" (|gap| {fields['gap']})"
    if fields["note"]:
        tolerance += f"; {fields['note']}"
    if fields["verdict"] == "OK":
        return "check", what, tolerance, "OK" + detail
    return "failed", what, tolerance, FAILED_TEXT + detail


def check_rows(notebook_path: Path) -> list[Row]:
    """Every printed check and bare assert of one notebook, in order, with section and equation labels."""
    return _read_chapter(notebook_path).rows


def _read_chapter(notebook_path: Path, number: int | None = None) -> Chapter:
    nb = nbformat.read(notebook_path, as_version=4)
    chapter = Chapter(notebook_path.stem, notebook_path.stem, number)
    title_found = False
    section = ""
    # Every markdown chunk so far (a cell's text split at headings): (cell index, heading level or 0, labels).
    chunks: list[tuple[int, int, list[str]]] = []
    last_code = -1
    first_code_seen = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for head, level, body in _chunks(cell.source):
                if head is not None:
                    if level == 1 and not title_found:
                        chapter.title, title_found = _clean_title(head), True
                    if level in (2, 3):
                        section = _clean_title(head)
                chunks.append((index, level, _labels(body)))
            continue
        if cell.cell_type != "code":
            continue
        if not first_code_seen:  # the Colab install cell
            first_code_seen, last_code = True, index
            continue
        labels = tuple(dict.fromkeys(_equation_labels(chunks, last_code)))
        last_code = index
        first_line = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")

        def row(kind: str, what: str, tolerance: str, result: str) -> Row:
            return Row(chapter.stem, index, section, labels, kind, what, tolerance, result, first_line)

        context: str | None = None
        for line in _stream_text(cell).splitlines():
            fields = parse_check_line(line)
            if fields is None:
                if looks_like_check(line):
                    chapter.unparsed.append((index, line))
                if line.strip() and not line[0].isspace():
                    context = line.split(":", 1)[0].strip() if ":" in line else line.strip()
                continue
            indented = line[:1].isspace()
            chapter.rows.append(row(*_format_check(fields, context if indented else None)))
        for line in cell.source.splitlines():
            if line.strip().startswith("assert "):
                expression, comment = assert_parts(line)
                chapter.rows.append(dataclasses.replace(
                    row("assert", _shorten(expression), "as written in the assert", "bare assert"), comment=comment))
    return chapter


def toc_chapters(toc: Path = TOC) -> list[tuple[str, int | None]]:
    """(notebook stem, chapter number or None) of every notebook in the TOC, in order."""
    data = yaml.safe_load(toc.read_text())
    out: list[tuple[str, int | None]] = []
    number = 0
    for part in data.get("parts", []):
        for entry in part.get("chapters", []):
            path = ROOT / entry["file"]
            if path.with_suffix(".ipynb").exists():
                if part.get("numbered"):
                    number += 1
                out.append((path.stem, number if part.get("numbered") else None))
    return out


def read_book(toc: Path = TOC) -> list[Chapter]:
    """Every TOC notebook with its rows."""
    return [_read_chapter(BOOK / f"{stem}.ipynb", number) for stem, number in toc_chapters(toc)]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def escape(text: str) -> str:
    """Plain text for a table cell: markdown punctuation (with '|' and '$') backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _cell_markdown(text: str) -> str:
    """Markdown (section titles, with $math$) for a table cell: only '|' is escaped."""
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    """An inline code span for a table cell (pipes escaped: the table splitter removes the backslash)."""
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}".replace("|", "\\|")


def _counts(rows: list[Row]) -> tuple[int, int, int, int]:
    """(checks, of which against a stated target, wrong-formula demonstrations, bare asserts)."""
    return (sum(r.kind == "check" for r in rows), sum(r.kind == "check" and _stated(r) for r in rows),
            sum(r.kind == "failed" for r in rows), sum(r.kind == "assert" for r in rows))


def _stated(row: Row) -> bool:
    # the tolerance column reads "tol <x> (<how>)" or "slack <x> (<how>)": the check's own `how` says so, not a note
    return re.search(r"\((?:slack: )?stated target", row.tolerance) is not None


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _chapter_heading(chapter: Chapter) -> str:
    return f"{chapter.number}. {chapter.title}" if chapter.number is not None else chapter.title


INTRO = f"""\
# Index of checks

A *check* computes one number by two independent routes (a Monte Carlo estimate and a closed form, a
quadrature and an identity, the package's function and the paper's algorithm written out) and compares
them within a tolerance. Almost every tolerance is derived: from the sample size (k standard errors), from
the grid (a trapezoid error bound) or from the floating-point precision (a number of ulps); see
{{doc}}`B_checks`. A few checks on trained networks and samplers have nothing to derive a tolerance from
(how good should a network trained for a minute be?) and compare against a **stated target**, a number
chosen and justified in the chapter before it is measured; their tolerance column says "stated target",
and the summary counts them separately. Every check is an assert, so a chapter's notebook fails when a
formula in its code or in `ddpm_lab` is wrong. The rows whose result reads
"{FAILED_TEXT}" are the other half of that argument: the same check applied to a wrong formula,
which must fail (the cell asserts that it does). The chapters' bare `assert` statements are listed too.
The numbers are the outputs stored in the notebooks, which nbval compares when the tests run.

This page is generated by `tools/check_index.py` from the stored notebook outputs: do not edit it by hand,
run `python tools/check_index.py` after re-executing a chapter.
"""


GRADERS = ROOT / "ddpm_lab" / "graders.py"


def grader_docs(path: Path = GRADERS) -> dict[str, str]:
    """{grade_<what>: the first paragraph of its docstring} for every grader of ddpm_lab.graders (read, not imported)."""
    if not path.exists():
        return {}
    docs = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("grade_"):
            first_paragraph = (ast.get_docstring(node) or "").split("\n\n")[0]
            docs[node.name] = " ".join(first_paragraph.split())
    return docs


def graders_by_chapter(toc: Path = TOC) -> list[tuple[str, list[str]]]:
    """[(chapter stem, the graders its exercise-grade cells call, in order)] for chapters with exercises."""
    out = []
    for stem, _ in toc_chapters(toc):
        nb = nbformat.read(BOOK / f"{stem}.ipynb", as_version=4)
        names: list[str] = []
        for cell in nb.cells:
            if cell.cell_type == "code" and "exercise-grade" in cell.metadata.get("tags", []):
                names += [n for n in re.findall(r"\b(grade_\w+)\(", cell.source) if n not in names]
        if names:
            out.append((stem, names))
    return out


def _render_graders(by_chapter: list[tuple[str, list[str]]], docs: dict[str, str]) -> list[str]:
    if not by_chapter:
        return []
    out = ["## Graders of the exercises", "",
           "Each code exercise is graded by a function of `ddpm_lab.graders` that runs the chapter's own checks on the "
           "reader's function. The tests run every grader on the chapter's solution (it must pass) and on wrong "
           "answers (they must fail).", "",
           "| chapter | grader | what it checks |", "| --- | --- | --- |"]
    for stem, names in by_chapter:
        for name in names:
            out.append(f"| {{doc}}`{stem}` | `{name}` | {escape(docs.get(name, ''))} |")
    return out + [""]


def render(rows_by_chapter: list[Chapter], graders: list[str] | None = None) -> str:
    """The whole page as MyST markdown (deterministic, ending in one newline); ``graders`` are extra lines (the
    graders' table) placed after the summary."""
    out = [INTRO, "## Summary", "",
           "| chapter | checks | of which against a stated target | wrong-formula demonstrations | bare asserts |",
           "| --- | ---: | ---: | ---: | ---: |"]
    totals = [0, 0, 0, 0]
    for chapter in rows_by_chapter:
        counts = _counts(chapter.rows)
        totals = [a + b for a, b in zip(totals, counts)]
        prefix = f"{chapter.number}. " if chapter.number is not None else ""
        out.append(f"| {prefix}{{doc}}`{chapter.stem}` | " + " | ".join(map(str, counts)) + " |")
    out.append("| **all chapters** | " + " | ".join(f"**{n}**" for n in totals) + " |")
    out.append("")
    out += graders or []
    for chapter in rows_by_chapter:
        checks, stated, failed, asserts = _counts(chapter.rows)
        of_which = f" ({stated} against a stated target)" if stated else ""
        out += [f"## {_chapter_heading(chapter)}", "",
                f"{{doc}}`{chapter.stem}`: {_plural(checks, 'check')}{of_which}, "
                f"{_plural(failed, 'wrong-formula demonstration')}, {_plural(asserts, 'bare assert')}.", "",
                "| # | section | equation | what it compares | tolerance | result |",
                "| ---: | --- | --- | --- | --- | --- |"]
        for i, r in enumerate(chapter.rows, start=1):
            section = _cell_markdown(r.section) if r.section else "(opening)"
            equations = ", ".join(f"{{eq}}`{label}`" for label in r.labels) or "(none)"
            what = _code(r.what) if r.kind == "assert" else escape(r.what)
            if r.comment:
                what += f" ({escape(r.comment)})"
            out.append(f"| {i} | {section} | {equations} | {what} | {escape(r.tolerance)} | {escape(r.result)} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def generate() -> str:
    """The page that the current notebooks give."""
    return render(read_book(), _render_graders(graders_by_chapter(), grader_docs()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if book/check_index.md is not what would be generated")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    page = generate()
    if args.check:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date with the notebooks: run python tools/check_index.py",
                  file=sys.stderr)
            return 1
        print(f"{PAGE.relative_to(ROOT)} is up to date ({time.perf_counter() - start:.2f} s)")
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)} ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
