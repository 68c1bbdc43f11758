"""Three fixes for pages built by Jupyter Book 1, found by the browser check (tools/check_book.py).

1. sphinx-thebe adds its inline configuration script once per reading pass, so a page could declare
   ``const THEBE_JS_URL`` twice: "Identifier 'THEBE_JS_URL' has already been declared" on every page.
   We drop repeated scripts (same file, same inline body) from each page.
2. The ipywidgets HTML manager typesets widget labels through the MathJax 2 API
   (``MathJax.Hub.Queue``); the book loads MathJax 3, so every widget page threw
   "Cannot read properties of undefined (reading 'Queue')". A two-line adapter maps that call onto
   MathJax 3's ``typesetPromise``.
3. A folded proof (sphinx-proof's ``{prf:proof}`` with ``:class: dropdown``) has no title, and the toggle
   script of the theme needs one: every such page threw "Cannot read properties of null (reading
   'insertAdjacentHTML')" and the proof could not be opened. We give each folded proof the title "Proof"
   (dropping the "Proof. " that sphinx-proof writes in front of its text) and a unique id (sphinx-proof
   gives every proof of a page the id "proof").
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx

MATHJAX2_ADAPTER = """
document.addEventListener("DOMContentLoaded", function () {
  if (window.MathJax && !window.MathJax.Hub) {  // MathJax 3 is loaded; widgets speak MathJax 2
    window.MathJax.Hub = {Queue: function (job) {
      var el = job[2];
      MathJax.startup.promise.then(function () { return MathJax.typesetPromise([el]); });
    }};
  }
});
"""


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    kept = []
    for js in scripts:
        body = js.attributes.get("body", "")
        key = ("", body) if body else (str(js.filename), "")  # the same inline body came as None and as ""
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept  # in place: handlers that run later add their scripts to this same list


def _title_folded_proofs(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for n, proof in enumerate(doctree.findall(nodes.admonition), start=1):
        classes = proof.get("classes", [])
        if "proof" not in classes or proof.get("ids") != ["proof"]:
            continue
        proof["ids"] = [f"proof-{n}"]
        if "dropdown" not in classes or (proof.children and isinstance(proof[0], nodes.title)):
            continue
        first = proof.next_node(nodes.Text)
        if first is not None and first.astext().startswith("Proof. "):
            first.parent.replace(first, nodes.Text(first.astext()[len("Proof. "):]))
        proof.insert(0, nodes.title("", "Proof"))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_js_file(None, body=MATHJAX2_ADAPTER, priority=100)
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _dedupe_scripts, priority=1)
    app.connect("doctree-resolved", _title_folded_proofs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
