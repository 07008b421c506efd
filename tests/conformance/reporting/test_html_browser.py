"""The HTML report as a user sees it: rendered pages opened in headless Chromium.

Pages: a conforming run, a padding mistake, a kernel flip, a statistics mistake, a run
with errors, an expected failure and an unexpected pass (with a coverage matrix), and the
coverage page alone, each over a few committed cases (-k). For every page: the page's own
self-check passes, nothing is logged to the console, nothing is requested but the file
itself, and the expected sections are there. The padding mistake's typical error map is
read back from the rendered pixels: its border ring is brighter than its interior, which
a kernel flip's is not, and a statistics mistake leaves the maps within the bound and
shows in the running-stat bars instead.

Full-page screenshots go to $RESBLOCK_SCREENSHOTS, or a temporary folder (printed with
``pytest -s``); never into the repository. Skips, saying why, without a Chromium.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from cdp import png_rgb
from test_html import coverage_doc, report_doc

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.reporting.report import json_report
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens

pytest.importorskip("jinja2", reason="the HTML report needs the html extra (jinja2)")
from resblock.conformance.reporting import html  # noqa: E402

GOOD = make_forward("correct_float32")
FLIPPED = make_forward("kernel_flipped")
XFAILED = "seeded-normal-n1-4x4-f4-s0"
XPASSED = "seeded-normal-n1-4x4-f4-s1"


def mixed(x, params, batch_stats):
    """Raises on 1x1 inputs, correct on one 4x4 case, a flipped kernel elsewhere."""
    if x.shape[1:3] == (1, 1):
        raise ValueError("1x1 inputs are not supported")
    if float(np.abs(x).sum()) == MIXED_GOOD_SUM[0]:
        return GOOD(x, params, batch_stats)
    return FLIPPED(x, params, batch_stats)


MIXED_GOOD_SUM = [None]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """name -> path of each rendered page."""
    from resblock.golden.reader import GoldenFile

    folder = tmp_path_factory.mktemp("html")
    with GoldenFile(default_goldens()[0]) as gf:
        MIXED_GOOD_SUM[0] = float(np.abs(gf.case(XPASSED).x).sum())
    xfail = folder / "known.txt"
    xfail.write_text(f"{XFAILED}  # flipped kernel, tracked\n{XPASSED}  # flaky on 4x4\n")
    cfg = CheckConfig(target="test_html_browser:mixed", keyword="1x1 or 4x4", details=12,
                      xfail=str(xfail))
    mixed_doc = json_report(run_check(cfg, InProcess(mixed, "functional", "nhwc"),
                                      default_goldens()))
    docs = {
        "conforming": html.render_report(report_doc("correct_float32", "4x4 or 16x16")),
        "padding": html.render_report(report_doc("valid_padding", "16x16")),
        "flip": html.render_report(report_doc("kernel_flipped", "16x16")),
        "stats": html.render_report(report_doc("torch_unbiased_running_var", "8x8 or 16x16")),
        "mixed": html.render_report(mixed_doc, coverage_doc()),
        "coverage": html.render_coverage(coverage_doc()),
    }
    paths = {}
    for name, text in docs.items():
        paths[name] = folder / f"{name}.html"
        html.write_html(text, paths[name])
    return paths


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("RESBLOCK_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nHTML report screenshots: {folder}")
    return folder


def load(chromium, path, shots):
    """Open a page, check it like a user would, save its screenshot; return the tab."""
    page = chromium.open(path)
    page.settle(0.3)
    assert page.js("document.body.dataset.selfcheck") == "ok"
    assert page.console == [], page.console
    assert page.requests == [f"file://{os.path.abspath(path)}"], page.requests
    (shots / f"{Path(path).stem}.png").write_bytes(page.screenshot())
    return page


def sections(page) -> list[str]:
    return page.js("[...document.querySelectorAll('section[data-section]')]"
                   ".map(s => s.dataset.section)")


def map_luminance(page, selector: str) -> np.ndarray:
    """The rendered luminance of each cell of the first map matching ``selector``, read
    from a screenshot of it (the centre pixel of each cell)."""
    box = page.js(f"""(() => {{
        const m = document.querySelector('{selector}');
        m.scrollIntoView();
        const r = m.getBoundingClientRect();
        return [r.left + m.clientLeft + scrollX, r.top + m.clientTop + scrollY,
                m.clientWidth, m.clientHeight, +m.dataset.rows, +m.dataset.cols];
    }})()""")
    x, y, w, h, rows, cols = box
    wpx, hpx, pixels = png_rgb(page.screenshot({"x": x, "y": y, "width": w, "height": h}))
    lum = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            red, green, blue = pixels[int((r + 0.5) * hpx / rows)][int((c + 0.5) * wpx / cols)]
            lum[r, c] = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return lum


def ring_contrast(lum: np.ndarray) -> float:
    """Mean luminance of the 2-pixel border ring minus that of the interior."""
    ring = np.ones(lum.shape, bool)
    ring[2:-2, 2:-2] = False
    return float(lum[ring].mean() - lum[~ring].mean())


TYPICAL_OUTPUT = 'svg.map[data-kind="typical"][data-tensor="output"]'


def test_conforming_report(chromium, pages, shots):
    page = load(chromium, pages["conforming"], shots)
    assert sections(page) == ["summary", "grid", "margin", "cases"]
    assert page.js("document.querySelector('[data-verdict]').dataset.verdict") == "conforms"
    assert page.js("+document.querySelector('[data-exit-status]').dataset.exitStatus") == 0
    bins = page.js("document.querySelector('svg.hist').dataset.bins").split(",")
    assert int(bins[-1]) == 0 and sum(map(int, bins)) > 0  # nothing beyond the bound
    page.close()


def test_padding_mistake_shows_a_bright_ring(chromium, pages, shots):
    page = load(chromium, pages["padding"], shots)
    assert sections(page) == ["summary", "grid", "failures", "cases"]
    assert "valid_padding" in page.js("document.querySelector('.pitfall').textContent")
    assert page.js("document.querySelectorAll('.case[data-status=fail]').length") >= 1
    lum = map_luminance(page, TYPICAL_OUTPUT)
    assert lum.shape == (16, 16)
    assert ring_contrast(lum) > 20, np.round(lum).astype(int)
    # A cell of the grid leads to its case.
    href = page.js("document.querySelector('.cell').getAttribute('href')")
    assert page.js(f"!!document.getElementById({href[1:]!r})")
    page.close()


def test_kernel_flip_looks_different_from_padding(chromium, pages, shots):
    page = load(chromium, pages["flip"], shots)
    assert "kernel_flipped" in page.js("document.querySelector('.pitfall').textContent")
    lum = map_luminance(page, TYPICAL_OUTPUT)
    assert abs(ring_contrast(lum)) < 20  # errors everywhere, no ring
    page.close()


def test_statistics_mistake_shows_in_the_bars_not_the_maps(chromium, pages, shots):
    page = load(chromium, pages["stats"], shots)
    assert "torch_unbiased_running_var" in page.js(
        "document.querySelector('.pitfall').textContent")
    # The output is within the bound (cool colours only, no hot range) ...
    his = page.js(f"[...document.querySelectorAll('{TYPICAL_OUTPUT}')].map(m => +m.dataset.hi)")
    assert his and max(his) <= 0
    # ... the running variances are not, the means are.
    worst = page.js("Object.fromEntries([...document.querySelectorAll('svg.bars')]"
                    ".slice(0, 4).map(b => [b.dataset.stat, +b.dataset.worst]))")
    assert worst["BatchNorm_0/var"] > 0 and worst["BatchNorm_1/var"] > 0
    assert worst["BatchNorm_0/mean"] <= 0 and worst["BatchNorm_1/mean"] <= 0
    page.close()


def test_errors_xfail_and_xpass_are_marked(chromium, pages, shots):
    page = load(chromium, pages["mixed"], shots)
    assert sections(page) == ["summary", "grid", "failures", "cases", "coverage"]
    marks = page.js("[...document.querySelectorAll('.cell')].map(c => c.dataset.status)")
    assert {"error", "fail", "xfail", "xpass"} <= set(marks)
    content = page.js(f"""getComputedStyle(document.querySelector(
        '.cell[href="#case-{XFAILED}"]'), '::after').content""")
    assert content == '"x"'
    assert page.js(f"!!document.getElementById('case-{XPASSED}')")
    assert page.js("document.querySelectorAll('.cov-strip').length") == 4
    page.close()


def test_coverage_page(chromium, pages, shots):
    page = load(chromium, pages["coverage"], shots)
    assert sections(page) == ["coverage"]
    oks = page.js("[...document.querySelectorAll('tr[data-kind]')].map(r => r.dataset.ok)")
    assert oks == ["yes", "yes", "yes", "no"]  # the reference row's inf is flagged
    page.close()
