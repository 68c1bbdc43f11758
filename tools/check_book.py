"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

    python tools/check_book.py [--html _build/html] [--shots _build/screenshots]   (what `make check-book` runs)
    python tools/check_book.py --self-test                                       (each check fails on a bad page)

The built HTML is served on 127.0.0.1 and every request to another host is refused, so the run also
proves the book needs no network. On every page it fails on:

- math: a MathJax error node, a math element MathJax did not typeset, or TeX left in the text
  (``$...$`` with a TeX command, ``\\(``, ``\\[``, ``\\begin{``, ``$$``) outside code;
- an image that did not load (after forcing lazy images to load);
- a broken internal link: a missing file, or an ``#anchor`` with no such id on the target page;
- a console error, an uncaught exception, a failed request or an HTTP error, a request off this host;
- a chapter of ``_toc.yml`` missing from the navigation sidebar;
- on a notebook page: no Colab or Binder launch button for that notebook; a widget with no static figure (a
  loaded ``<img>``) in the code cell just before or after it, for a reader without a kernel.

It saves full-page screenshots of the landing page and two chapters under ``--shots``. Chromium comes
from Debian's ``chromium`` package (``make check-book`` installs it), driven by Playwright.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [  # the flags that keep Chromium from calling home on a machine with no network
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions",
]
SCREENSHOTS = {"landing": "book/intro.html", "ch03": "book/03_forward_process.html",
               "ch08": "book/08_training_sampling.html"}

# Runs in the page after load: waits for MathJax and the widget manager, then reports what it finds.
PAGE_PROBE = r"""
async () => {
  const out = {mathErrors: [], untypeset: 0, mathCount: 0, texInText: [], badImages: [], images: 0,
               links: [], ids: [], nav: [], colab: [], widgets: 0, widgetsWithoutFigure: [],
               widgetsRendered: 0};
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  // images: load lazy ones too, then wait for every image to settle
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); setTimeout(r, 10000); })));
  out.images = imgs.length;
  for (const i of imgs) { if (!(i.complete && i.naturalWidth > 0)) out.badImages.push(i.getAttribute("src")); }
  // math
  for (const e of document.querySelectorAll("mjx-merror, [data-mjx-error], mjx-assistive-mml merror")) {
    out.mathErrors.push((e.getAttribute("data-mjx-error") || e.textContent).slice(0, 120));
  }
  // an undefined macro is not an error in MathJax 3 (the noundefined package): it is shown as red text
  for (const e of document.querySelectorAll("mjx-assistive-mml mtext[mathcolor='red']")) {
    if (e.textContent.startsWith("\\")) out.mathErrors.push("undefined macro " + e.textContent.slice(0, 60));
  }
  const mathEls = document.querySelectorAll("span.math, div.math");
  out.mathCount = mathEls.length;
  for (const e of mathEls) { if (!e.querySelector("mjx-container")) out.untypeset += 1; }
  const body = document.querySelector("article") || document.body;
  const clone = body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .highlight, textarea").forEach(e => e.remove());
  const text = clone.textContent;
  const texPatterns = [/\$\$/g, /\\\(/g, /\\\[/g, /\\begin\{/g, /\$[^$\n]{0,200}\\[A-Za-z]+[^$\n]{0,200}\$/g];
  for (const re of texPatterns) {
    for (const m of text.matchAll(re)) { out.texInText.push(text.slice(Math.max(0, m.index - 30), m.index + 50)); }
  }
  // links and anchors
  for (const a of document.querySelectorAll("a[href]")) out.links.push(a.href);
  for (const e of document.querySelectorAll("[id]")) out.ids.push(e.id);
  for (const e of document.querySelectorAll("a[name]")) out.ids.push(e.getAttribute("name"));
  for (const a of document.querySelectorAll("nav.bd-docs-nav a[href]")) out.nav.push(a.href);
  for (const a of document.querySelectorAll("a[href^='https://colab.research.google.com/'], a[href^='https://mybinder.org/']")) {
    out.colab.push(a.href);
  }
  // widgets: each must have a loaded static figure in its own section, outside the widget
  const views = document.querySelectorAll("script[type='application/vnd.jupyter.widget-view+json']");
  out.widgets = views.length;
  if (views.length && document.querySelector("script[src*='embed-amd']")) {
    const t0 = Date.now();  // the manager renders asynchronously
    while (document.querySelectorAll(".jupyter-widgets").length === 0 && Date.now() - t0 < 10000) {
      await new Promise(r => setTimeout(r, 100));
    }
    out.widgetsRendered = document.querySelectorAll(".widget-interaction, .jupyter-widgets.widget-container").length;
  }
  // "beside": the nearest code cell before or after the widget's cell (markdown in between is fine)
  const cells = Array.from(document.querySelectorAll("div.cell"));
  const shows = c => c && Array.from(c.querySelectorAll("div.cell_output img")).some(
      i => !i.closest(".jupyter-widgets") && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 0);
  for (const v of views) {
    const k = cells.indexOf(v.closest("div.cell"));
    if (!(shows(cells[k - 1]) || shows(cells[k + 1]))) {
      const section = v.closest("section");
      out.widgetsWithoutFigure.push(section ? section.id : "?");
    }
  }
  return out;
}
"""


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    pages: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def fail(self, page: str, what: str) -> None:
        self.failures.append(f"{page}: {what}")

    def count(self, key: str, n: int) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


def toc_files(toc_path: Path) -> list[str]:
    """Every file the book's _toc.yml lists (without extension), root first."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for e in entries:
            if "file" in e:
                files.append(e["file"])
            for key in ("chapters", "sections", "parts"):
                walk(e.get(key, []))

    walk(toc.get("parts", []) + toc.get("chapters", []))
    return files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the report readable
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def check_site(html: Path, toc: list[str], notebooks: set[str], shots: Path | None,
               chromium: str, quiet: bool = False) -> Report:
    from playwright.sync_api import sync_playwright

    report = Report()
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/", "_images/")))
    server, base = serve(html)
    ids: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            def route(r: object) -> None:  # refuse every request off this host: the book must work offline
                url = r.request.url  # type: ignore[attr-defined]
                if url.startswith(base) or url.startswith("data:"):
                    r.continue_()  # type: ignore[attr-defined]
                else:
                    report.fail(current[0], f"request off this host: {url[:120]}")
                    r.abort()  # type: ignore[attr-defined]

            context.route("**/*", route)
            current = [""]
            for rel in pages:
                current[0] = rel
                redirect = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', (html / rel).read_text(), re.I)
                if redirect:  # index.html: a redirect to the first page; check that its target exists
                    links.append((rel, base + str(Path(rel).parent / redirect.group(1)).removeprefix("./")))
                    continue
                t_page = time.perf_counter()
                page = context.new_page()
                page.on("console", lambda m, rel=rel: m.type == "error" and report.fail(rel, f"console error: {m.text[:200]}"))
                page.on("pageerror", lambda e, rel=rel: report.fail(rel, f"uncaught exception: {str(e)[:200]}"))
                page.on("requestfailed", lambda r, rel=rel: r.url.startswith(base) and report.fail(
                    rel, f"request failed: {r.url[len(base):]} ({r.failure})"))
                page.on("response", lambda r, rel=rel: r.status >= 400 and report.fail(
                    rel, f"HTTP {r.status}: {r.url[len(base):] if r.url.startswith(base) else r.url}"))
                page.goto(base + rel, wait_until="load")
                res = page.evaluate(PAGE_PROBE)
                report.pages += 1
                report.count("math elements", res["mathCount"])
                report.count("images", res["images"])
                report.count("links", len(res["links"]))
                report.count("widgets", res["widgets"])
                report.count("widgets rendered", res["widgetsRendered"])
                for e in res["mathErrors"]:
                    report.fail(rel, f"MathJax error: {e}")
                if res["untypeset"]:
                    report.fail(rel, f"{res['untypeset']} of {res['mathCount']} math elements not typeset")
                for t in res["texInText"][:5]:
                    report.fail(rel, f"TeX left in the text: {t!r}")
                for src in res["badImages"]:
                    report.fail(rel, f"image did not load: {src}")
                for sec in res["widgetsWithoutFigure"]:
                    report.fail(rel, f"widget in section #{sec} has no static figure beside it")
                ids[rel] = set(res["ids"])
                links += [(rel, u) for u in res["links"]]
                # navigation: every file of the TOC is linked from the sidebar
                nav = {urlsplit(urldefrag(u)[0]).path.lstrip("/") for u in res["nav"]}
                if rel.startswith("book/"):  # the chapter pages (index.html only redirects)
                    missing = [f for f in toc[1:] if f + ".html" not in nav]
                    if missing:
                        report.fail(rel, f"missing from the navigation: {', '.join(missing)}")
                stem = rel.removesuffix(".html")
                if stem in notebooks:
                    if not any(u.startswith("https://colab") and u.endswith(f"/{stem}.ipynb") for u in res["colab"]):
                        report.fail(rel, "no Colab launch button for this notebook")
                    if not any(u.startswith("https://mybinder") and u.endswith(f"/{stem}.ipynb") for u in res["colab"]):
                        report.fail(rel, "no Binder launch button for this notebook")
                if shots is not None and rel in SCREENSHOTS.values():
                    name = next(k for k, v in SCREENSHOTS.items() if v == rel)
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                page.close()
                if not quiet:
                    print(f"  {rel}: {res['mathCount']} math, {res['images']} images, {len(res['links'])} links,"
                          f" {res['widgets']} widgets ({time.perf_counter() - t_page:.1f} s)", flush=True)
            browser.close()
    finally:
        server.shutdown()
    # internal links: the file exists, and an #anchor exists on an HTML target
    checked = 0
    for src, url in links:
        if not url.startswith(base):
            continue
        target, frag = urldefrag(url)
        path = unquote(urlsplit(target).path).lstrip("/") or "index.html"
        if path.endswith("/"):
            path += "index.html"
        if not (html / path).is_file():
            report.fail(src, f"broken link: {url[len(base):]}")
            continue
        checked += 1
        if frag and path.endswith(".html") and path in ids and unquote(frag) not in ids[path]:
            report.fail(src, f"broken anchor: {url[len(base):]}")
    report.count("internal links checked", checked)
    return report


def self_test(chromium: str) -> int:
    """Build a tiny site with one defect of each kind and check that every defect is reported."""
    WIDGET = ('<div class="cell"><div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">'
              '{"model_id": "x"}</script></div></div>')
    PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
             "DwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp)
        (html / "book").mkdir()
        static = html / "_static"
        static.mkdir()
        mj = ROOT / "_offline" / "static" / "mathjax"
        (static / "mathjax").symlink_to(mj)
        head = '<script defer src="../_static/mathjax/tex-mml-chtml.js"></script>'
        nav = '<nav class="bd-docs-nav"><a href="good.html">good</a></nav>'
        (html / "book" / "good.html").write_text(
            f'<html><head>{head}</head><body>{nav}<article><section id="s">'
            r'<p>Fine: <span class="math">\(x^2\)</span>.</p><a href="good.html#s">self</a>'
            f'{WIDGET}<div class="cell"><div class="cell_output"><img src="{PIXEL}"></div></div>'
            '</section></article></body></html>')
        (html / "book" / "bad.html").write_text(
            f'<html><head>{head}<script>console.error("boom")</script></head><body>{nav}<article>'
            r'<p>raw: $\alpha_t$ and <span class="math">\(\undefinedmacro{x}\)</span> <span class="math">\(\left( x\)</span></p>'
            '<img src="missing.png"><a href="nowhere.html">x</a><a href="good.html#nope">y</a>'
            f'<img src="https://example.com/x.png"><section id="w">{WIDGET}</section></article></body></html>')
        report = check_site(html, ["book/intro", "book/good", "book/other"], {"book/good"}, None, chromium,
                            quiet=True)
    expected = {  # defect -> a phrase its failure line must contain
        "console error": "console error: boom", "TeX in text": "TeX left in the text",
        "undefined macro": "MathJax error: undefined macro \\undefinedmacro",
        "TeX syntax error": "MathJax error: Extra \\left", "broken image": "image did not load: missing.png",
        "broken link": "broken link: book/nowhere.html", "broken anchor": "broken anchor: book/good.html#nope",
        "missing nav entry": "missing from the navigation: book/other",
        "no Colab button": "book/good.html: no Colab launch button",
        "no Binder button": "book/good.html: no Binder launch button",
        "widget without a static figure": "widget in section #w has no static figure", "off-host request": "request off this host",
    }
    missed = [k for k, phrase in expected.items() if not any(phrase in f for f in report.failures)]
    spurious = [f for f in report.failures if f.startswith("book/good.html") and "navigation" not in f
                and "launch button" not in f]
    for f in report.failures:
        print("  reported:", f)
    if missed or spurious:
        print(f"SELF-TEST FAILED: not detected {missed}; false alarms on the good page {spurious}")
        return 1
    print(f"self-test: all {len(expected)} kinds of defect detected, none on the good page")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    ap.add_argument("--shots", type=Path, default=ROOT / "_build" / "screenshots")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if not Path(args.chromium).exists():
        sys.exit(f"no Chromium at {args.chromium}: install Debian's chromium package (make check-book does)")
    if args.self_test:
        return self_test(args.chromium)
    if not (args.html / "index.html").exists():
        sys.exit(f"{args.html} has no index.html: run `make book` first")
    toc = toc_files(ROOT / "_toc.yml")
    notebooks = {f for f in toc if (ROOT / f"{f}.ipynb").exists()}
    t0 = time.perf_counter()
    report = check_site(args.html, toc, notebooks, args.shots, args.chromium)
    secs = time.perf_counter() - t0
    summary = ", ".join(f"{v} {k}" for k, v in report.stats.items())
    print(f"checked {report.pages} pages in {secs:.1f} s: {summary}")
    if report.failures:
        print(f"{len(report.failures)} problems:")
        for f in report.failures:
            print("  " + f)
        return 1
    print(f"no problems; screenshots in {args.shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
