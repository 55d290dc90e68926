"""The rendered book as a reader meets it: built, served on loopback, read in headless Chromium.

One fresh build per session (scripts/build_book.sh -n, into a temporary folder),
then every page of _toc.yml is opened with the network cut off (every request
that does not go to the loopback server is aborted and recorded) and checked:
math typeset by the book's own MathJax, every image loaded, no console or page
error, no request leaving the machine. A chapter's kernel-free knob must move.
Full-page screenshots land in _build/screenshots/ for a person to look at.

The browser tests are skipped, with the reason, only where Playwright's Python
package or a Chromium binary cannot be found; the build checks run regardless.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, source_of, toc_chapters

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

NO_BROWSER = ("Playwright's Python package is not installed (pip install playwright)" if sync_playwright is None
              else "no Chromium binary (apt-get install chromium, or set $CHROMIUM)" if CHROMIUM is None
              else None)

SCREENSHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# What a page looks like to a reader once it has settled: MathJax done, images loaded.
INSPECT = """async () => {
  const mj = window.MathJax;
  const mathNodes = document.querySelectorAll('.math');
  let mathjax = 'absent';
  if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; mathjax = 'ready'; }
  else if (mathNodes.length) { mathjax = 'not loaded'; }
  const untypeset = [...mathNodes].filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60));
  const texErrors = [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60));
  const body = document.querySelector('main') || document.body;
  const clone = body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea').forEach(e => e.remove());
  const text = clone.textContent;
  const rawTex = (text.match(/\\$\\$|\\\\\\(|\\\\\\[|\\\\begin\\{|\\$\\\\[a-zA-Z]/g) || []);
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                                     .map(i => (i.getAttribute('src') || '').slice(0, 80));
  return {mathjax, math: mathNodes.length, typeset: document.querySelectorAll('mjx-container').length,
          untypeset, texErrors, rawTex, images: document.images.length, broken};
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fresh build of the whole book: (html folder, build log)."""
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh"), "-n", "--keep-going",
                           "--path-output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    html = out / "_build" / "html"
    if not (html / "index.html").exists():
        pytest.fail(f"the book did not build (exit {proc.returncode}):\n{log[-4000:]}")
    return html, log


@pytest.fixture(scope="module")
def site(built):
    """The built book served on a loopback port: its base URL."""
    html, _ = built
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Reader:
    """A browser tab on the book that records console errors and every off-machine request."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def open(self, path: str):
        response = self.page.goto(self.base + path, wait_until="load")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def reader(browser, site):
    r = Reader(browser, site)
    yield r
    r.close()


def shot(page, name: str, max_height: int = 8000):
    """A full-page screenshot (its first max_height pixels: the API page is ~30 000 tall)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = min(page.evaluate("document.documentElement.scrollHeight"), max_height)
    page.screenshot(path=str(SCREENSHOTS / f"{name.replace('/', '__')}.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": page.viewport_size["width"], "height": height})


def html_of(built, docname: str) -> str:
    html, _ = built
    path = html / f"{docname}.html"
    if not path.exists():
        if not source_of(docname).exists():
            pytest.skip(f"{docname} is not written yet (tests/test_structure.py fails for it)")
        pytest.fail(f"{docname} exists but the build made no {docname}.html")
    return path.read_text(encoding="utf-8")


# ---- the build -----------------------------------------------------------------------------

def test_build_is_warning_free(built):
    _, log = built
    problems = [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert not problems, "the book builds with warnings (CI builds with -W -n):\n" + "\n".join(problems[:40])


class _Fetches(HTMLParser):
    """The URLs a page makes the browser fetch by itself (not the links a reader may follow)."""

    FETCHING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest"}

    def __init__(self, text: str):
        super().__init__()
        self.urls: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href") and self.FETCHING_RELS & set((a.get("rel") or "").lower().split()):
            self.urls.append(a["href"])


def test_no_page_names_a_remote_script_or_stylesheet(built):
    html, _ = built
    offenders = {}
    for page in html.rglob("*.html"):
        remote = [u for u in _Fetches(page.read_text(encoding="utf-8", errors="replace")).urls
                  if re.match(r"(https?:)?//", u)]
        if remote:
            offenders[str(page.relative_to(html))] = remote[:3]
    assert not offenders, f"pages that load something from another site: {offenders}"
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").exists(), "MathJax is not served from the build"


def test_chapter_page_links_colab_api_and_references(built, toc_chapter):
    page = html_of(built, toc_chapter)
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"].get("branch", "main")
    colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{toc_chapter}.ipynb"
    assert f'href="{colab}"' in page, f"no Colab launch button pointing to {colab}"
    assert re.search(r'href="[./]*book/api(/\w+)?\.html#(module-)?tricklib\.', page), \
        "the page links no tricklib API entry (use {py:func}`tricklib.<module>.<name>` in 'In tricklib')"
    assert re.search(r'class="footnote-list|class="footnote brackets', page), \
        "no references generated from the .bib ({footcite:p}`key` + ```{footbibliography}```)"


# ---- every page in the browser -----------------------------------------------------------

def test_page_reads_offline(built, reader, toc_page):
    html_of(built, toc_page)
    page = reader.open(f"{toc_page}.html")
    state = page.evaluate(INSPECT)
    page.wait_for_timeout(100)  # let late console messages arrive
    shot(page, toc_page)
    assert not reader.blocked, f"requests that would leave the machine: {reader.blocked}"
    assert not reader.errors, "\n".join(reader.errors)
    if state["math"]:
        assert state["mathjax"] == "ready", f"MathJax {state['mathjax']} on a page with {state['math']} formulas"
    assert not state["untypeset"], f"formulas MathJax did not typeset: {state['untypeset'][:5]}"
    assert not state["texErrors"], f"TeX errors: {state['texErrors'][:5]}"
    assert not state["rawTex"], f"raw TeX left in the visible text: {state['rawTex'][:5]}"
    assert not state["broken"], f"images that did not load: {state['broken'][:5]}"


# What a 1280-px reader sees of a chapter's layout: figures shrunk below 60% of their drawn
# width (their text then falls under ~9 px), and blocks wider than their box (a scroll bar
# hides the end of a line). Hidden knob frames are skipped: every frame has the visible one's size.
LAYOUT = """() => {
  const main = document.querySelector('main') || document.body;
  const visible = e => getComputedStyle(e).display !== 'none' && e.getClientRects().length > 0;
  const small = [...main.querySelectorAll('img')].filter(i => visible(i) && i.naturalWidth > 0)
    .map(i => ({src: (i.getAttribute('alt') || i.getAttribute('src') || '').slice(0, 50),
                natural: i.naturalWidth, shown: Math.round(i.getBoundingClientRect().width)}))
    .filter(i => i.shown < 0.6 * i.natural);
  const wide = [...main.querySelectorAll('pre, div.highlight, div.cell_output, div.output, table')]
    .filter(e => visible(e) && e.scrollWidth > e.clientWidth + 1)
    .map(e => ({tag: e.tagName.toLowerCase() + (e.className ? '.' + e.className.split(' ')[0] : ''),
                text: e.textContent.trim().slice(0, 50), scroll: e.scrollWidth, box: e.clientWidth}));
  return {small, wide};
}"""


def test_chapter_figures_are_drawn_for_the_column(built, reader, toc_chapter):
    """Every figure is shown at >= 60% of its natural width (the book style draws for ~690 px)."""
    html_of(built, toc_chapter)
    layout = reader.open(f"{toc_chapter}.html").evaluate(LAYOUT)
    assert not layout["small"], ("figures shrunk below 60% of their width (text under ~9 px; draw them at most "
                                 f"~7 inches wide with tricklib.use_book_style()): {layout['small'][:6]}")


def test_nothing_on_a_chapter_page_scrolls_sideways(built, reader, toc_chapter):
    """No code, diff, output or table is wider than its box."""
    html_of(built, toc_chapter)
    layout = reader.open(f"{toc_chapter}.html").evaluate(LAYOUT)
    assert not layout["wide"], f"blocks wider than the column (they scroll sideways): {layout['wide'][:6]}"


def test_search_works_offline(built, reader):
    page = reader.open("search.html?q=tricklib")
    page.wait_for_selector("#search-results ul.search li", timeout=15_000)
    assert page.locator("#search-results ul.search li").count() > 0
    assert not reader.blocked, f"requests that would leave the machine: {reader.blocked}"
    assert not reader.errors, "\n".join(reader.errors)


# ---- the knob ----------------------------------------------------------------------------------

VISIBLE_FRAME = """k => { const im = [...k.querySelectorAll('img')].filter(i => getComputedStyle(i).display !== 'none');
  return im.map(i => ({key: i.dataset.key, w: i.naturalWidth})); }"""


def move_knob(page, knob):
    """Press → on each slider of a knob; check the frame and the shown value follow."""
    sliders = knob.locator("input[type=range]")
    n = sliders.count()
    assert 1 <= n <= 2
    before = knob.evaluate(VISIBLE_FRAME)
    assert len(before) == 1 and before[0]["w"] > 0, f"not exactly one frame shown: {before}"
    key = before[0]["key"].split("-")
    for i in range(n):
        slider = sliders.nth(i)
        labels = json.loads(slider.get_attribute("data-labels"))
        value, top = int(slider.input_value()), int(slider.get_attribute("max"))
        slider.focus()
        page.keyboard.press("ArrowRight" if value < top else "ArrowLeft")
        new = int(slider.input_value())
        assert new != value, "the slider did not move"
        key[i] = str(new)
        shown = knob.evaluate(VISIBLE_FRAME)
        assert [s["key"] for s in shown] == ["-".join(key)], f"frame shown {shown}, expected {'-'.join(key)}"
        assert shown[0]["w"] > 0
        output = slider.locator("xpath=following-sibling::output")
        assert output.text_content() == labels[new], "the shown value did not follow the slider"


def test_knob_moves_in_a_real_browser(browser):
    """The HTML of tricklib.knob on its own (no book): one and two knobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tricklib

    def fig(gamma, alpha=0.25):
        f, ax = plt.subplots(figsize=(4, 2.5))
        ax.plot([0, 1], [0, gamma * alpha])
        return f

    one = tricklib.knob(fig, {"gamma": [0, 0.5, 1, 2]}, initial={"gamma": 1})
    two = tricklib.knob(fig, {"gamma": [0, 1, 2], "alpha": [0.25, 0.5]})
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.set_content(f"<html><body>{one.to_html()}<hr>{two.to_html()}</body></html>")
        knobs = page.locator(".tricklib-knob")
        assert knobs.count() == 2
        move_knob(page, knobs.nth(0))
        move_knob(page, knobs.nth(1))
        # the first knob kept its own frame while the second moved
        assert [s["key"] for s in knobs.nth(0).evaluate(VISIBLE_FRAME)] == ["3"]
        assert not errors, errors
    finally:
        context.close()


def test_knob_moves_on_a_chapter_page(built, reader):
    html, _ = built
    pages = [d for d in toc_chapters() if (html / f"{d}.html").exists()
             and 'class="tricklib-knob"' in (html / f"{d}.html").read_text(encoding="utf-8")]
    if not pages:
        pytest.skip("no chapter shows a tricklib.knob yet")
    page = reader.open(f"{pages[0]}.html")
    knob = page.locator(".tricklib-knob").first
    knob.scroll_into_view_if_needed()
    move_knob(page, knob)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    knob.screenshot(path=str(SCREENSHOTS / "knob_moved.png"))
    assert not reader.errors and not reader.blocked
