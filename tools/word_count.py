"""Words of main text and visible figures per chapter, as a reader sees them on the page.

    python tools/word_count.py          print a table (chapter, words, folded words, figures)

*Main text* is the prose of the markdown cells a reader sees without a click. Not counted: display math
(``$$...$$`` and ``{math}`` blocks; inline ``$...$`` counts as one word), HTML tags, markdown cells tagged
``hide-cell``/``remove-cell``, the bodies of folded directives (``dropdown``, ``toggle``, and any directive
with a ``:class: dropdown`` option, such as a folded ``prf:proof``), and the exercises (``exercise`` and
``solution`` directives, counted with the folded words: they are the reader's work, not the lesson's prose). *Figures* are PNG outputs of code cells
whose output is not hidden (``hide-output``, ``remove-output``, ``hide-cell`` or ``remove-cell``).
``tests/test_book.py`` holds every chapter to MAX_WORDS and MIN_FIGURES.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MAX_WORDS = 2600  # "about 2,500 words" of main text per chapter
MIN_FIGURES = 4
# a backtick fence's info string cannot hold a backtick (CommonMark): such a line opens no directive
_FENCE = re.compile(r"^(?P<fence>`{3,}(?=\{[^\n`]*$)|:{3,})\{(?P<name>[\w:-]+)\}[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.S | re.M)
_HIDDEN_OUTPUT = {"hide-output", "remove-output", "hide-cell", "remove-cell"}


_EXERCISES = {"exercise", "solution"}


def _folded(name: str, body: str) -> bool:
    return (name in {"dropdown", "toggle"} | _EXERCISES
            or re.search(r"^:class:[^\n]*\bdropdown\b", body, re.M) is not None)


def visible_text(markdown: str) -> tuple[str, str]:
    """(the text a reader sees, the text inside folded directives) of one markdown cell."""
    folded: list[str] = []

    def strip(m: re.Match[str]) -> str:
        if m["name"] in {"math"}:
            return " "
        if _folded(m["name"], m["body"]):
            folded.append(m["body"])
            return " "
        return m["body"]
    text = markdown
    for _ in range(3):  # nested directives
        text = _FENCE.sub(strip, text)
    return text, "\n".join(folded)


def count_words(text: str) -> int:
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$\n]+\$", " M ", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"^:[\w-]+:.*$", " ", text, flags=re.M)  # directive options
    return len(re.findall(r"[A-Za-z0-9][\w'’-]*", text))


def chapter_stats(path: Path) -> dict[str, int]:
    nb = nbformat.read(path, as_version=4)
    words = folded = figures = 0
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type == "markdown":
            seen, hidden = visible_text(cell.source)
            if tags & {"hide-cell", "remove-cell"}:
                folded += count_words(cell.source)
            else:
                words += count_words(seen)
                folded += count_words(hidden)
        elif cell.cell_type == "code" and not tags & _HIDDEN_OUTPUT:
            figures += sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
    return {"words": words, "folded": folded, "figures": figures}


def chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def main() -> int:
    print(f"{'chapter':34s} {'words':>6s} {'folded':>7s} {'figures':>7s}")
    for path in chapters() + sorted((ROOT / "book").glob("[A-Z]_*.ipynb")):
        s = chapter_stats(path)
        print(f"{path.name:34s} {s['words']:6d} {s['folded']:7d} {s['figures']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
