"""The interactive report in a real browser: headless Chromium (the system's, driven by
Playwright), every request but the page itself blocked. `make test-browser` runs these; a
missing browser fails with the command that installs it."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_fixture import build  # noqa: E402

from headway.report.html import write_report  # noqa: E402

pytestmark = pytest.mark.browser

INSTALL = ("install Chromium: `sudo apt-get install chromium` (Debian/Ubuntu), or point "
           "HEADWAY_CHROMIUM at a Chrome or Chromium executable; `make test-browser` does the "
           "former where it can")

# the view of the model named NAME: where its plot frame is on the page
FRAME = """(name) => {
  function find(view) {
    if (!view) return null;
    if (view.model && view.model.name === name) return view;
    for (const child of (view.child_views || [])) { const hit = find(child); if (hit) return hit; }
    return null;
  }
  for (const root of Object.values(Bokeh.index)) {
    const view = find(root);
    if (view) { const r = view.el.getBoundingClientRect(), b = view.frame.bbox;
                return {left: r.left + b.left, top: r.top + b.top, width: b.width,
                        height: b.height}; }
  }
  return null;
}"""
# the text of every visible tooltip, through the shadow roots Bokeh draws into
TOOLTIPS = """() => {
  const out = [];
  function walk(node) {
    if (node.classList && node.classList.contains("bk-Tooltip")) {
      const text = (node.shadowRoot ? node.shadowRoot.textContent : "") + node.textContent;
      const style = getComputedStyle(node);
      if (style.display !== "none" && style.visibility !== "hidden" && text.trim())
        out.push(text);
    }
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.children || []) walk(child);
  }
  walk(document.body);
  return out;
}"""
DATA = "(name) => Array.from(Bokeh.documents[0].get_model_by_name(name).data.score)"
TOKEN_VALUES = "(name) => Array.from(Bokeh.documents[0].get_model_by_name(name).data.value)"


def head_of(tip: str) -> str | None:
    """The ``layer.head`` a tooltip names (its ``head`` line)."""
    found = re.search(r"head:\s*(\d+\.\d+)", tip)
    return found.group(1) if found else None


def chromium() -> str:
    for candidate in (os.environ.get("HEADWAY_CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.fail(f"no Chromium found: {INSTALL}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, llama_dir):
    return build(tmp_path_factory.mktemp("report"), llama_dir)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A report opened with every request but its own file blocked; what the page says."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors, self.blocked = [], []
        own = path.resolve().as_uri()

        def route(r):
            if r.request.url == own:
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(own)
        if self.page.locator("script").count():
            self.page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0")
        self.page.wait_for_timeout(300)

    def frame(self, name: str) -> dict:
        box = self.page.evaluate(FRAME, name)
        assert box, f"no figure named {name}"
        return box

    def cell_point(self, name: str, layer: int, head: int, n_layers: int, n_heads: int):
        """Scroll the heatmap into view; the page coordinates of cell layer.head."""
        box = self.frame(name)
        self.page.mouse.wheel(0, box["top"] - 200)
        self.page.wait_for_timeout(200)
        box = self.frame(name)
        return (box["left"] + box["width"] * (head + 0.5) / n_heads,
                box["top"] + box["height"] * (layer + 0.5) / n_layers)

    def hover(self, point) -> list[str]:
        self.page.mouse.move(*point)
        self.page.wait_for_timeout(400)
        return self.page.evaluate(TOOLTIPS)

    def clean(self):
        assert not self.errors, self.errors
        assert not self.blocked, f"the page asked the network for {self.blocked}"


def test_the_analysis_report_is_explorable_offline(folders, browser, tmp_path):
    report = write_report(folders["analysis"])
    assert report.stat().st_size < 5e6
    page = Page(browser, report)

    # hover a cell of the task's pattern: its head, score, rank and task
    tips = page.hover(page.cell_point("patterns-heatmap", 1, 2, 2, 4))
    assert len(tips) == 1 and head_of(tips[0]) == "1.2" and "rank" in tips[0]
    assert "arithmetic" in tips[0]

    # another task in the selector: the heatmap shows its pattern
    before = page.page.evaluate(DATA, "patterns-heatmap-source")
    page.page.locator("select").first.select_option("sorting")
    page.page.wait_for_timeout(300)
    after = page.page.evaluate(DATA, "patterns-heatmap-source")
    assert after != before

    # the step slider: the pattern and ΔAP of an earlier record
    ap = page.page.evaluate(DATA, "run-ap-source")
    delta = page.page.evaluate(DATA, "run-delta-source")
    page.cell_point("run-ap", 0, 0, 2, 4)  # into view
    handle = page.page.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowLeft")
    page.page.wait_for_timeout(300)
    assert page.page.evaluate(DATA, "run-ap-source") != ap
    assert page.page.evaluate(DATA, "run-delta-source") != delta
    assert "step 4 of 6" in page.page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('run-label').text")

    # click a head: its trajectory over the steps
    page.page.mouse.click(*page.cell_point("run-ap", 1, 3, 2, 4))
    page.page.wait_for_timeout(300)
    title = page.page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('run-head').title.text")
    assert title.startswith("AP of head 1.3")
    tips = page.hover(page.cell_point("run-ap", 1, 3, 2, 4))
    assert tips and head_of(tips[0]) == "1.3"
    shot = Path(os.environ.get("HEADWAY_SCREENSHOTS", tmp_path)) / "report-tooltip.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # the token view: the last row of one pattern, then a pattern with fewer rows (and other
    # top heads): row and head are clamped to the new pattern's
    page.frame("tokens")
    set_value = """([name, value]) => {
        Bokeh.documents[0].get_model_by_name(name).value = value; }"""
    title = "() => Bokeh.documents[0].get_model_by_name('tokens').title.text"
    page.page.evaluate(set_value, ["tokens-pattern", "arithmetic"])
    page.page.evaluate(set_value, ["tokens-row", "5"])
    assert page.page.evaluate(title).startswith("arithmetic: row 5, head ")
    before = page.page.evaluate(TOKEN_VALUES, "tokens-source")
    page.page.evaluate(set_value, ["tokens-pattern", "sorting"])
    page.page.wait_for_timeout(200)
    assert page.page.evaluate(title).startswith("sorting: row 3, head ")
    assert page.page.evaluate(TOKEN_VALUES, "tokens-source") != before

    # the sections that follow: composition, ablation draws
    for name in ("composition-alpha", "composition-fit", "ablation", "similarity"):
        page.frame(name)
    page.clean()


def test_the_compare_report_in_a_browser(folders, browser):
    page = Page(browser, write_report(folders["compare"]))
    tips = page.hover(page.cell_point("compare-delta", 0, 1, 2, 4))
    assert tips and head_of(tips[0]) == "0.1" and "rank" in tips[0]
    page.clean()


def test_the_static_report_still_works(folders, browser, tmp_path):
    page = Page(browser, write_report(folders["analysis"], tmp_path / "static.html",
                                      static=True))
    assert page.page.locator("img").count() >= 10 and page.page.locator("script").count() == 0
    page.clean()
