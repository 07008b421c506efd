"""A case outside a storage profile (spec 8.6, 12.4) is skipped by ``resblock check``: not
run, counted, reported in every format, and never enough for a run to conform."""

import json
from xml.etree import ElementTree as ET

from click.testing import CliRunner

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.mistakes.variants_inference import make_infer
from resblock.conformance.reporting.html import render_report
from resblock.conformance.reporting.report import json_report, junit_xml, terminal_summary
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens
from resblock.schemas import validate

LARGE = ("stress-large-n1-8x8-f8-s0", "stress-large-n2-6x6-f4-s0")
KEY = "stress-large or seeded-normal-n1-4x4-f4-s0"


class Counting(InProcess):
    """Records which cases the implementation was called on."""

    def __init__(self, fn, api):
        super().__init__(fn, api, "nhwc")
        self.called = []

    def run(self, gcs):
        self.called += [gc.id for gc in gcs]
        return super().run(gcs)


def check(profile, keyword=KEY, api="functional"):
    fn = make_infer(store="float16") if api == "inference" else make_forward("float16_block")
    inv = Counting(fn, api)
    run = run_check(CheckConfig(target="t.py:f", api=api, profile=profile, keyword=keyword),
                    inv, default_goldens())
    return run, inv.called


def test_float16_block_conforms_under_fp16_with_the_large_cases_skipped():
    run, called = check("fp16")
    assert [r.id for r in run.results if r.status == "skip"] == sorted(LARGE)
    assert called == ["seeded-normal-n1-4x4-f4-s0"]  # skipped cases are not run
    assert run.count("pass") == 1 and run.conforms
    msg = {r.id: r.message for r in run.results}[LARGE[0]]
    assert msg == ("batch variance of BatchNorm_0 reaches 1.05e+06 > float16's 65504 "
                   "(a conforming port stores inf)")
    text = terminal_summary(run)
    assert f"  SKIP  {LARGE[0]}: {msg}" in text
    assert text.splitlines()[-1].startswith(
        "CONFORMS: 1 passed, 0 failed (0 errors), 0 xfailed, 0 xpassed, 2 skipped (outside "
        "the profile) of 3 cases")


def test_inference_float16_block_skips_the_running_variance_overflow():
    run, called = check("fp16", api="inference")
    skipped = {r.id: r.message for r in run.results if r.status == "skip"}
    assert set(skipped) == set(LARGE) and run.conforms and len(called) == 1
    assert skipped[LARGE[0]].startswith("running variance of BatchNorm_0 reaches 3.82e+06 > "
                                        "float16's 65504")


def test_fp32_and_bf16_skip_nothing():
    for profile in ("fp32", "bf16"):
        run, called = check(profile)
        assert run.count("skip") == 0 and len(called) == 3


def test_reports_carry_the_skip():
    run, _ = check("fp16")
    doc = json_report(run)
    validate(doc, "check-report", where="the JSON report")
    assert doc["report_version"] == "1.1.0"
    assert doc["summary"] == {"pass": 1, "fail": 0, "error": 0, "xfail": 0, "xpass": 0,
                              "skip": 2, "total": 3}
    case = {c["id"]: c for c in doc["cases"]}[LARGE[1]]
    assert case["status"] == "skip" and "repro" not in case
    assert case["message"].startswith("batch variance of BatchNorm_0 reaches 6.61e+05")
    root = ET.fromstring(junit_xml(run).split("\n", 1)[1])
    assert root.get("skipped") == "2" and root.get("failures") == "0"
    skips = {tc.get("name"): tc.find("skipped") for tc in root.iter("testcase")}
    assert skips[LARGE[0]].get("message") == case_message(doc, LARGE[0])
    assert skips["seeded-normal-n1-4x4-f4-s0"] is None
    html = render_report(doc)
    assert 'data-status="skip"' in html and "2 skip</span>" in html


def case_message(doc, case_id):
    return {c["id"]: c for c in doc["cases"]}[case_id]["message"]


def test_a_run_with_every_case_skipped_does_not_conform(tmp_path):
    run, called = check("fp16", keyword="stress-large")
    assert called == [] and run.count("skip") == 2 and not run.conforms
    text = terminal_summary(run)
    assert ("no case passed: every selected case is outside the profile, so nothing was "
            "checked") in text
    assert text.splitlines()[-1].startswith("DOES NOT CONFORM: 0 passed")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", "--impl", "examples/numpy_float32.py:forward",
                                   "--profile", "fp16", "-k", "stress-large",
                                   "--json-report", str(out)])
    assert res.exit_code == 1, res.output
    assert json.loads(out.read_text())["verdict"] == "does_not_conform"
