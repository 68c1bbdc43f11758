"""Read the exercises of a chapter: the solutions written in its ``{solution}`` directives, as functions.

A code exercise in a chapter is: a markdown cell with an ``{exercise}`` directive (``:label: ex-...``), a code
cell tagged ``exercise-stub`` that defines the reader's function with body ``...``, a code cell tagged
``exercise-grade`` that prints ``grade_<what>(<function>)``, and a markdown cell with the
``{solution} ex-...`` directive whose ```` ```python ```` block defines the same function, self-contained
(its own imports).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import nbformat

ROOT = Path(__file__).resolve().parent.parent
_SOLUTION = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution\}\s*(?P<label>\S+)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                       re.S | re.M)
_EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}[^\n]*\n(?::[^\n]*\n)*?:label:\s*(?P<label>\S+)", re.M)
_PYTHON = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)


def notebook(chapter: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "book" / f"{chapter}.ipynb", as_version=4)


def exercise_labels(chapter: str) -> list[str]:
    nb = notebook(chapter)
    return [m["label"] for c in nb.cells if c.cell_type == "markdown" for m in _EXERCISE.finditer(c.source)]


def solution_sources(chapter: str) -> dict[str, str]:
    """{exercise label: the python code of its solution} (empty string for a solution without code)."""
    out: dict[str, str] = {}
    for c in notebook(chapter).cells:
        if c.cell_type != "markdown":
            continue
        for m in _SOLUTION.finditer(c.source):
            code = "\n".join(p["code"] for p in _PYTHON.finditer(m["body"]))
            out[m["label"]] = code
    return out


def solution_functions(chapter: str) -> dict[str, Callable[..., Any]]:
    """Every function defined by the chapter's solution code blocks, by name (each block run on its own)."""
    fns: dict[str, Callable[..., Any]] = {}
    for label, code in solution_sources(chapter).items():
        if not code:
            continue
        ns: dict[str, Any] = {}
        exec(compile(code, f"<solution {label} of {chapter}>", "exec"), ns)  # noqa: S102 - the book's own text
        fns.update({k: v for k, v in ns.items() if callable(v) and getattr(v, "__module__", None) is None
                    and not k.startswith("_")})
    return fns


def grading_outputs(chapter: str) -> list[str]:
    """The stored text output of every cell tagged ``exercise-grade``."""
    texts = []
    for c in notebook(chapter).cells:
        if c.cell_type == "code" and "exercise-grade" in c.metadata.get("tags", []):
            texts.append("".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream"))
    return texts
