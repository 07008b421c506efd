"""Tests of conformance/reporting/html.py and the ``--html`` / ``resblock report`` commands,
without a browser (test_html_browser.py opens the pages in Chromium): what the pages say,
that they stay self-contained and bounded, and that a plain check never imports the
template engine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.reporting import html
from resblock.conformance.reporting.report import json_report
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens

pytest.importorskip("jinja2", reason="the HTML report needs the html extra (jinja2)")

GOLDENS = default_goldens()
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
HTML_DEPS = ("jinja2", "markupsafe")


def report_doc(variant: str, keyword: str, details: int = 12) -> dict:
    cfg = CheckConfig(target=f"variants:{variant}", keyword=keyword, details=details)
    return json_report(run_check(cfg, InProcess(make_forward(variant), "functional", "nhwc"),
                                 GOLDENS))


def coverage_doc(n_cases: int = 6) -> dict:
    """A synthetic document of the coverage command's shape (it renders it for --html)."""
    cases = [{"id": f"seeded-normal-n1-4x4-f4-s{i}", "family": "seeded", "group": f"g{i % 3}"}
             for i in range(n_cases)]
    rows = [
        {"kind": "pitfall", "name": "valid_padding", "profile": "fp32",
         "scores": [1e4] * n_cases, "named": [True] * n_cases},
        {"kind": "pitfall", "name": "epsilon_1e3", "profile": "bf16",
         "scores": [0.5] + [30.0] * (n_cases - 1), "named": [False] + [True] * (n_cases - 1)},
        {"kind": "zoo", "name": "winograd_f32", "profile": "fp32",
         "scores": [None] + [0.2] * (n_cases - 1)},  # None: not run on that case
        {"kind": "reference", "name": "flax", "profile": "fp32",
         "scores": [0.01] * (n_cases - 1) + ["inf"]},
    ]
    return {"kind": "resblock-coverage",
            "goldens": [{"path": "golden/default.h5", "content_sha256": "ab" * 32}],
            "profiles": ["fp32", "tf32", "bf16"], "cases": cases, "rows": rows}


def test_conforming_page_shows_verdict_margin_and_grid():
    doc = report_doc("correct_float32", "4x4 or 8x8")
    page = html.render_report(doc)
    assert "CONFORMS" in page and 'data-exit-status="0"' in page
    for section in ("summary", "grid", "margin", "cases"):
        assert f'data-section="{section}"' in page
    assert 'data-section="failures"' not in page
    assert page.count('class="cell st-pass') == doc["summary"]["total"]
    assert page.count('class="cell st-pass gap"') >= 1  # 4x4 and 16x16 shapes apart
    assert Path(GOLDENS[0]).name in page and doc["cases"][0]["id"] in page


def test_failing_page_shows_maps_pitfall_fix_and_repro():
    doc = report_doc("valid_padding", "16x16 or 8x8", details=3)
    page = html.render_report(doc)
    assert "DOES NOT CONFORM" in page and 'data-exit-status="1"' in page
    assert 'data-section="failures"' in page and 'data-section="margin"' not in page
    assert page.count('data-kind="typical"') == 3
    assert "matches pitfall valid_padding" in page and "padding=1 in PyTorch" in page
    assert "repro: <code>resblock check --impl variants:valid_padding" in page
    assert page.count('class="bars"') == 3 * 4  # four running-stat vectors per case


def test_pages_reference_nothing_outside_themselves():
    for page in (html.render_report(report_doc("kernel_flipped", "8x8")),
                 html.render_coverage(coverage_doc())):
        assert "http://" not in page and "https://" not in page
        for tag in ("<link", "<img", "<iframe", "src=", "@import", "url("):
            assert tag not in page
        assert "default-src 'none'" in page  # the CSP forbids any load from outside


def test_coverage_matrix_rows_say_what_was_caught_and_named():
    page = html.render_coverage(coverage_doc())
    assert "caught on 6/6, named on 6/6" in page
    assert "caught on 5/6, named on 5/6" in page
    assert "within the bound on 5/6" in page  # the reference row's inf is a miss
    assert "within the bound on 5/5" in page  # the zoo row was not run on one case
    assert html.NOT_RUN_COLOUR in page
    assert page.count('class="cov-strip"') == 4
    assert page.count("<circle") == 11  # one dot per named case


def test_coverage_matrix_of_a_big_grid_shows_groups():
    page = html.render_coverage(coverage_doc(n_cases=html.MAX_COVERAGE_COLUMNS + 1))
    assert "case group (its weakest detection)" in page
    assert 'data-levels="' in page and len(page) < 100_000


def test_render_coverage_refuses_other_documents():
    from resblock.errors import HarnessError

    with pytest.raises(HarnessError, match="resblock-coverage"):
        html.render_coverage({"kind": "something-else"})


def test_big_grid_stays_bounded():
    doc = report_doc("valid_padding", "16x16")
    detailed = next(c for c in doc["cases"] if c.get("details"))
    plain = dict(detailed, details=None)
    plain.pop("details")
    many = [dict(detailed, id=f"seeded-normal-n1-16x16-f16-s{i}") for i in range(12)]
    many += [dict(plain, id=f"seeded-normal-n1-16x16-f8-s{i}") for i in range(20000)]
    page = html.render_report(dict(doc, cases=many))
    assert len(page) < 6_000_000  # about 150 bytes a case beyond the first 2000
    assert page.count('data-kind="typical"') == 12
    assert f"... and {20012 - html.MAX_TABLE_ROWS} more" in page
    # Only the cases on the page are linked from the grid.
    assert page.count('<a class="cell') == html.MAX_TABLE_ROWS
    assert page.count('<span class="cell') == 20012 - html.MAX_TABLE_ROWS


def test_check_html_and_report_commands(tmp_path):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    runner = CliRunner()
    res = runner.invoke(cli, ["check", "--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward",
                              "-k", "4x4", "-q", "--html", str(out), "--json-report", str(js)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert os.stat(out).st_mode & 0o044  # readable by others, as open() would create it
    again = tmp_path / "again.html"
    cov = tmp_path / "cov.json"
    cov.write_text(json.dumps(coverage_doc()))
    res = runner.invoke(cli, ["report", str(js), "-o", str(again), "--coverage", str(cov)])
    assert res.exit_code == 0, res.output
    page = again.read_text()
    assert 'data-section="coverage"' in page and "CONFORMS" in page


def test_report_command_refuses_bad_input_with_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"report_version": "1.0.0"}')
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(bad), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "check-report" in res.output
    res = runner.invoke(cli, ["report", str(tmp_path / "missing.json"), "-o",
                              str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "not a readable JSON file" in res.output
    res = runner.invoke(cli, ["check", "--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward",
                              "--html", str(tmp_path / "no" / "such" / "r.html")])
    assert res.exit_code == 2 and "does not exist" in res.output


IMPORTS = """
import sys
from resblock.cli import cli
try:
    cli(sys.argv[1:], prog_name="resblock")
except SystemExit as e:
    code = e.code
print("\\nMODULES", code, " ".join(m for m in {deps!r} if m in sys.modules))
"""


@pytest.mark.parametrize("with_html", [False, True])
def test_plain_check_imports_no_html_dependency(tmp_path, with_html):
    args = ["check", "--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", "-k", "1x1", "-q",
            "--json-report", str(tmp_path / "r.json")]
    if with_html:
        args += ["--html", str(tmp_path / "r.html")]
    proc = subprocess.run([sys.executable, "-c", IMPORTS.format(deps=HTML_DEPS), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["MODULES", "0"], proc.stdout + proc.stderr
    assert last[2:] == (list(HTML_DEPS) if with_html else []), "imported: " + " ".join(last[2:])


def test_html_report_of_a_generated_grid(smoke_golden, tmp_path):
    path, _ = smoke_golden
    out = tmp_path / "smoke.html"
    res = CliRunner().invoke(cli, ["check", "--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward",
                                   "--goldens", str(path), "-q", "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "preset smoke" in page and 'data-section="margin"' in page


def test_large_maps_say_they_are_pooled():
    import numpy as np

    from resblock.conformance.judging.details import tensor_maps

    scores = np.full((1, 100, 40, 3), 2.0)
    part = html.tensor_maps_html(tensor_maps("output", scores))
    assert "max-pooled by 4x2" in part and 'data-rows="25" data-cols="20"' in part


def _hostile_reports(tmp_path):
    """A check report of a failing run, then edited the ways an attacker or an accident
    would (issue 20): each becomes a one-line refusal, exit 2, never a traceback."""
    doc = report_doc("missing_residual", "functional-normal-n2-4x4-f4-s0", details=2)
    with_details = next(c for c in doc["cases"] if c.get("details"))
    out = {}
    text = json.dumps(doc)
    out["lone surrogate"] = text.replace('"target": "', '"target": "\\ud800', 1)
    out["deep nesting"] = '{"a": ' * 100000 + "1" + "}" * 100000
    broken = json.loads(text)
    case = next(c for c in broken["cases"] if c["id"] == with_details["id"])
    stat = case["details"]["stats"][0]
    stat["got"] = stat["got"][:-1]  # one value short of its expected vector
    out["details whose vectors differ in length"] = json.dumps(broken)
    return {k: (tmp_path / f"{i}.json", v) for i, (k, v) in enumerate(out.items())}


def test_report_command_refuses_hostile_reports_in_one_line(tmp_path):
    runner = CliRunner()
    for what, (path, text) in _hostile_reports(tmp_path).items():
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        res = runner.invoke(cli, ["report", str(path), "-o", str(tmp_path / "x.html")])
        assert res.exit_code == 2, (what, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 2, \
            (what, res.output)
        assert not (tmp_path / "x.html").exists(), what


def test_report_command_validates_the_coverage_document(tmp_path):
    js, cov = tmp_path / "r.json", tmp_path / "cov.json"
    js.write_text(json.dumps(report_doc("missing_residual", "functional-normal-n2-4x4-f4-s0")))
    runner = CliRunner()
    bad = coverage_doc()
    bad["rows"][0]["scores"] = bad["rows"][0]["scores"][:-1]  # one score short
    cov.write_text(json.dumps(bad))
    res = runner.invoke(cli, ["report", str(js), "-o", str(tmp_path / "x.html"),
                              "--coverage", str(cov)])
    assert res.exit_code == 2 and "do not match its case list" in res.output
    bad = coverage_doc()
    bad["rows"][0]["scores"][0] = "lots"
    cov.write_text(json.dumps(bad))
    res = runner.invoke(cli, ["report", str(js), "-o", str(tmp_path / "x.html"),
                              "--coverage", str(cov)])
    assert res.exit_code == 2 and "schema 'coverage'" in res.output
