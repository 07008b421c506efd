"""Tests of conformance/reporting/report.py: terminal summary, JSON report, JUnit XML, repro lines.

One failing run over the committed goldens feeds most tests: an implementation that
raises on 1x1 inputs (errors), returns NaN on 2x2 inputs (failures with infinite
score), is correct on 16-channel inputs (passes), and otherwise is the
``missing_residual`` variant (failures named after that pitfall); one of its failing
cases is listed in an xfail file.
"""

import json
import re
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.pitfalls import lookup
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.reporting.report import (
    json_report,
    junit_xml,
    terminal_summary,
    write_json,
)
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile
from resblock.schemas import validate
from resblock.spec.cases import Case

GOLDENS = default_goldens()
WRONG = make_forward("missing_residual")
RIGHT = make_forward("correct_float32")
XFAILED = "seeded-normal-n1-16x16-f8-s0"
TARGET = "tests/my_port.py:forward"

with GoldenFile(GOLDENS[0]) as _gf:
    IDS = list(_gf.ids)
    CONTENT_SHA = _gf.metadata["content_sha256"]
    META = dict(_gf.metadata)
N_CASES = len(IDS)


def mixed(x, params, batch_stats):
    if x.shape[1:3] == (1, 1):
        raise RuntimeError("no 1x1 support")
    if x.shape[-1] == 16:
        return RIGHT(x, params, batch_stats)
    y, stats = WRONG(x, params, batch_stats)
    if x.shape[1:3] == (2, 2):
        y = np.full_like(y, np.nan)
    return y, stats


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    xf = tmp_path_factory.mktemp("xfail") / "xfail.txt"
    xf.write_text(f"{XFAILED}  # known\n")
    cfg = CheckConfig(target=TARGET, xfail=str(xf))
    return run_check(cfg, InProcess(mixed, "functional", "nhwc"), GOLDENS)


def test_the_mixed_run_has_every_status(run):
    n_1x1 = sum(Case.from_id(i).h == Case.from_id(i).w == 1 for i in IDS)
    assert run.count("error") == n_1x1 > 0
    assert run.count("xfail") == 1
    assert run.count("fail") > 10 and run.count("pass") > 0
    assert sum(run.count(s) for s in ("pass", "fail", "error", "xfail", "xpass")) == N_CASES
    assert run.pitfalls["missing_residual"] > 0


# --- JSON ----------------------------------------------------------------------------


def test_json_report_validates_and_counts(run, tmp_path):
    doc = json_report(run)
    validate(doc, "check-report", where="the JSON report")
    json.dumps(doc, allow_nan=False)  # strict JSON: inf/nan were turned into strings
    assert doc["verdict"] == "does_not_conform"
    assert doc["summary"] == {"pass": run.count("pass"), "fail": run.count("fail"),
                              "error": run.count("error"), "xfail": 1, "xpass": 0,
                              "skip": 0, "total": N_CASES}
    assert (doc["target"], doc["api"], doc["layout"], doc["profile"]) == (
        TARGET, "functional", "nhwc", "fp32")
    assert doc["goldens"] == [{"path": GOLDENS[0], "content_sha256": CONTENT_SHA,
                               "spec_version": META["spec_version"],
                               "format_version": META["format_version"],
                               "preset": "default"}]
    p = lookup("missing_residual")
    assert doc["pitfalls"] == [{"name": "missing_residual",
                                "cases": run.pitfalls["missing_residual"],
                                "explanation": p.explanation, "fix": p.fix}]
    assert [c["id"] for c in doc["cases"]] == [r.id for r in run.results]
    out = tmp_path / "report.json"
    write_json(run, out)
    assert json.loads(out.read_text())["summary"] == doc["summary"]


def test_json_cases_carry_tensors_worst_index_and_pitfall(run):
    cases = {c["id"]: c for c in json_report(run)["cases"]}
    with GoldenFile(GOLDENS[0]) as gf:
        named = [c for c in cases.values() if c["pitfall"] == "missing_residual"]
        assert named and all(c["status"] in ("fail", "xfail") for c in named)
        for c in named:
            names = [t["name"] for t in c["tensors"]]
            assert names == ["output", "BatchNorm_0/mean", "BatchNorm_0/var",
                             "BatchNorm_1/mean", "BatchNorm_1/var"]
            out = c["tensors"][0]
            assert not out["ok"] and out["n_bad"] > 0
            assert len(out["worst_index"]) == 4
            assert all(len(t["worst_index"]) == 1 for t in c["tensors"][1:])
            assert out["share_bad"] == pytest.approx(out["n_bad"] / out["size"])
            # The worst element is real: the oracle and the implementation agree with it.
            gc = gf.case(c["id"])
            idx = tuple(out["worst_index"])
            assert out["expected"] == float(gc.arrays["oracle/y"][idx])
            y, _ = WRONG(gc.x, gc.params, gc.batch_stats_in)
            assert out["got"] == float(y[idx])
            assert out["worst_score"] == pytest.approx(
                abs(out["got"] - out["expected"]) / out["bound"], rel=1e-9)
            # the case's score is its worst tensor's under both tests (spec 8.5)
            assert c["worst_score"] == max(max(t["worst_score"], t.get("aggregate", 0.0))
                                           for t in c["tensors"])
            assert out["aggregate"] == pytest.approx(
                out["aggregate_q"] / out["aggregate_limit"], rel=1e-12)
    nan_case = cases["seeded-normal-n1-2x2-f2-s0"]
    assert nan_case["status"] == "fail"
    assert nan_case["worst_score"] == "inf"
    assert nan_case["tensors"][0]["got"] == "nan"
    err = cases["seeded-normal-n1-1x1-f4-s0"]
    assert err["status"] == "error" and err["tensors"] == [] and err["pitfall"] is None
    assert err["message"].startswith("raised RuntimeError: no 1x1 support")
    assert cases[XFAILED]["status"] == "xfail" and cases[XFAILED]["xfail_reason"] == "known"


def wrong_nchw(x, params, batch_stats):
    y, stats = WRONG(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), {
        k: ({"kernel": v["kernel"].transpose(2, 3, 1, 0), "bias": v["bias"]}
            if k.startswith("Conv") else v) for k, v in params.items()}, batch_stats)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)), stats


def test_worst_index_is_in_the_implementations_layout():
    cfg = CheckConfig(target="t", layout="nchw", keyword="functional-normal-n4-3x5-f8-s0",
                      diagnose=False)
    run = run_check(cfg, InProcess(wrong_nchw, "functional", "nchw"), GOLDENS)
    (r,) = run.results
    out = r.tensors[0]
    with GoldenFile(GOLDENS[0]) as gf:
        ref_nchw = gf.case(r.id).arrays["oracle/y"].transpose(0, 3, 1, 2)
    assert ref_nchw.shape == (4, 8, 3, 5)
    assert out.expected == float(ref_nchw[out.worst_index])
    text = terminal_summary(run)
    idx = ",".join(map(str, out.worst_index))
    assert f"worst [nchw]=[{idx}]" in text


# --- JUnit ---------------------------------------------------------------------------


def test_junit_xml(run):
    root = ET.fromstring(junit_xml(run))
    assert root.tag == "testsuite"
    assert root.get("tests") == str(N_CASES)
    assert root.get("failures") == str(run.count("fail"))
    assert root.get("errors") == str(run.count("error"))
    assert root.get("skipped") == str(run.count("xfail"))
    props = {p.get("name"): p.get("value") for p in root.find("properties")}
    assert props["target"] == TARGET and props["profile"] == "fp32"
    cases = root.findall("testcase")
    assert [tc.get("name") for tc in cases] == [r.id for r in run.results]
    for tc in cases:
        assert tc.get("classname") == f"resblock.{Case.from_id(tc.get('name')).family}"
    assert sum(tc.find("failure") is not None for tc in cases) == run.count("fail")
    assert sum(tc.find("error") is not None for tc in cases) == run.count("error")
    assert sum(tc.find("skipped") is not None for tc in cases) == run.count("xfail")
    by_id = {tc.get("name"): tc for tc in cases}
    diagnosed = next(r for r in run.results if r.status == "fail" and r.pitfall)
    failure = by_id[diagnosed.id].find("failure")
    assert f"repro: resblock check --impl {TARGET}" in failure.text
    assert f"matches pitfall missing_residual: {lookup('missing_residual').fix}" in failure.text
    assert "output: " in failure.text and "out of bound" in failure.text
    error = by_id["seeded-normal-n1-1x1-f4-s0"].find("error")
    assert error.get("message") == "raised RuntimeError: no 1x1 support"
    assert "xfail: known" == by_id[XFAILED].find("skipped").get("message")
    passed = next(r.id for r in run.results if r.status == "pass")
    assert len(by_id[passed]) == 0


# --- terminal summary ----------------------------------------------------------------

HEAD = re.compile(r"^  (ERROR|FAIL |XPASS) (\S+)(?:  worst score (\S+))?")


def test_terminal_summary(run):
    text = terminal_summary(run)
    lines = text.splitlines()
    assert lines[0].startswith(f"resblock check: {TARGET} (api functional, layout nhwc, "
                               "profile fp32) against ")
    assert lines[-1].startswith(
        f"DOES NOT CONFORM: {run.count('pass')} passed, "
        f"{run.count('fail') + run.count('error')} failed ({run.count('error')} errors), "
        f"1 xfailed, 0 xpassed of {N_CASES} cases in ")
    assert "worst cases:" in lines
    heads = [(i, HEAD.match(ln)) for i, ln in enumerate(lines) if HEAD.match(ln)]
    assert len(heads) == 10  # max_cases
    n_bad = run.count("fail") + run.count("error")
    assert f"  ... and {n_bad - 10} more (see --json-report)" in lines
    # Errors first, then failures from the worst score down.
    kinds = [m.group(1).strip() for _, m in heads]
    assert kinds == sorted(kinds, key=lambda k: k != "ERROR")
    scores = [float(m.group(3)) for _, m in heads if m.group(3)]
    assert scores == sorted(scores, reverse=True) and scores[0] == float("inf")
    # One repro line per listed case, after its details and before the next case.
    repros = [ln.strip() for ln in lines if ln.strip().startswith("repro: ")]
    assert repros == [f"repro: resblock check --impl {TARGET} --api functional --layout nhwc "
                      f"--profile fp32 -k {m.group(2)}" for _, m in heads]
    p = lookup("missing_residual")
    assert f"  missing_residual ({run.pitfalls['missing_residual']} cases): {p.explanation}" \
        in lines
    assert f"      fix: {p.fix}" in lines


def test_terminal_summary_lists_every_case_when_asked(run):
    text = terminal_summary(run, max_cases=1000)
    n_bad = run.count("fail") + run.count("error")
    assert text.count("repro: ") == n_bad
    assert "more (see --json-report)" not in text
    listed = [r for r in run.results if r.status in ("fail", "error")]
    n_named = sum(r.pitfall == "missing_residual" for r in listed)
    assert n_named > 0 and text.count("matches pitfall: missing_residual") == n_named
    assert XFAILED not in text  # an expected failure is not a problem to list


def test_terminal_summary_family_lines(run):
    lines = terminal_summary(run).splitlines()
    for fam in ("functional", "seeded", "stress"):
        line = next(ln for ln in lines if ln.startswith(f"  {fam:11s}"))
        for status in ("error", "fail", "xfail", "pass"):
            n = sum(r.family == fam and r.status == status for r in run.results)
            assert (f"{n} {status}" in line) == (n > 0), line


def test_terminal_summary_of_a_conforming_run():
    cfg = CheckConfig(target="good", keyword="seeded")
    run = run_check(cfg, InProcess(make_forward("correct_float32"), "functional", "nhwc"),
                    GOLDENS)
    text = terminal_summary(run)
    n = run.count("pass")
    assert text.splitlines()[-1].startswith(f"CONFORMS: {n} passed, 0 failed (0 errors)")
    assert "worst cases:" not in text and "repro:" not in text


# --- through the CLI -----------------------------------------------------------------


def test_cli_writes_valid_json_and_junit(tmp_path, missing_residual_impl):
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    r = CliRunner().invoke(cli, ["check", "-q", "--impl", f"{missing_residual_impl}:forward", "-k",
                                 "seeded", "--json-report", str(js), "--junit", str(xml)])
    assert r.exit_code == 1, r.output
    doc = json.loads(js.read_text())
    validate(doc, "check-report")
    n_seeded = sum(i.startswith("seeded-") for i in IDS)
    assert doc["summary"]["total"] == n_seeded
    root = ET.parse(xml).getroot()
    assert len(root.findall("testcase")) == n_seeded
    assert int(root.get("failures")) == doc["summary"]["fail"] > 0
    assert {tc.get("classname") for tc in root.findall("testcase")} == {"resblock.seeded"}


# --- known defects (see the bug notes in each test) ---------------------------------


def test_repro_line_for_a_program_uses_exec():
    # BUG (conformance/reporting/report.py, repro_line): CheckConfig has no ``is_program`` field, so
    # the condition is always False and a --exec run is reproduced as
    # ``--impl PROGRAM {input} {output}``, which the CLI rejects (no colon). Suggested: add
    # ``CheckConfig.kind = "impl" | "exec"`` set by the CLI, and quote the template
    # (shlex.quote) in ``--exec``.
    prog = f"{sys.executable} -c pass {{input}} {{output}}"
    r = CliRunner().invoke(cli, ["check", "-q", "--exec", prog, "-k",
                                 "seeded-normal-n1-1x1-f4-s0"])
    assert r.exit_code == 1, r.output
    repro = next(ln.strip() for ln in r.output.splitlines() if "repro:" in ln)
    assert repro.startswith("repro: resblock check --exec ")
    assert "--impl" not in repro


def test_repro_line_names_non_default_goldens(tmp_path):
    # BUG (conformance/reporting/report.py, repro_line): the repro line drops --goldens, so for a
    # run on other golden files it checks the committed set instead (or selects nothing).
    # Suggested: append ``--goldens PATH`` per file in run.goldens unless they are the
    # committed defaults.
    import shutil

    copy = tmp_path / "mine.h5"
    shutil.copyfile(GOLDENS[0], copy)
    cfg = CheckConfig(target="t", keyword="seeded-normal-n1-4x4-f4-s0", diagnose=False)
    run = run_check(cfg, InProcess(WRONG, "functional", "nhwc"), [copy])
    repro = next(ln for ln in terminal_summary(run).splitlines() if "repro:" in ln)
    assert f"--goldens {copy}" in repro


def test_repro_line_keeps_the_timeout():
    # BUG (conformance/reporting/report.py, repro_line): --timeout is dropped, so the repro of
    # a case that hung or crashed the worker runs in-process: it hangs forever or kills the CLI.
    # Suggested: append ``--timeout {c.timeout:g}`` when set (and ``--xfail`` is not needed).
    cfg = CheckConfig(target="t", keyword="seeded-normal-n1-4x4-f4-s0", timeout=5.0,
                      diagnose=False)
    run = run_check(cfg, InProcess(WRONG, "functional", "nhwc"), GOLDENS)
    repro = next(ln for ln in terminal_summary(run).splitlines() if "repro:" in ln)
    assert "--timeout 5" in repro


def test_unwritable_report_path_is_a_harness_error(tmp_path):
    # BUG (conformance/cli.py, check): an OSError while writing --json-report/--junit is
    # not a HarnessError, so the CLI dies with a traceback and exit status 1, which means
    # "does not conform", after printing CONFORMS. Suggested: wrap the writes and raise
    # HarnessError(f"--json-report {path}: cannot write: {e}") (exit 2); better, check the
    # paths' directories before the run.
    example = Path(__file__).resolve().parents[3] / "examples" / "numpy_float32.py"
    target = tmp_path / "no_such_dir" / "r.json"
    r = CliRunner().invoke(cli, ["check", "-q", "--impl", f"{example}:forward", "-k",
                                 "seeded-normal-n1-1x1", "--json-report", str(target)])
    assert r.exit_code == 2, (r.exit_code, r.output)
