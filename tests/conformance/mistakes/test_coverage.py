"""Tests of conformance/mistakes/coverage.py: the detection matrix's document."""

from __future__ import annotations

from resblock.conformance.mistakes.coverage import coverage, pitfall_summaries
from resblock.schemas import errors


def test_the_coverage_document_validates_against_its_schema(smoke_golden):
    """What `resblock coverage --json` writes is what `resblock report --coverage`
    accepts (schemas/coverage.schema.json), aggregate-only flags included."""
    path, _ = smoke_golden
    doc = coverage([path], profiles=("fp32",), zoo_names=())
    assert errors(doc, "coverage") == []
    n = len(doc["cases"])
    assert all(len(r["scores"]) == n and len(r["aggregate_only"]) == n for r in doc["rows"])
    # a row rejected only by the aggregate test is also counted as rejected
    for s in pitfall_summaries(doc):
        assert 0 <= s.by_aggregate <= s.rejected <= s.applicable


def test_text_report_says_what_each_profile_lets_through():
    """A profile under which no case rejects a mistake says so by name (issue 18: "a
    profile that lets epsilon 1e-3 through says so"); the backward has no row under the
    storage profiles."""
    from resblock.conformance.mistakes.coverage import text_report

    cases = [{"id": f"c{i}", "family": "functional", "group": "g"} for i in range(2)]
    rows = []
    for prof, eps, f16 in (("fp32", [2.0, 3.0], [5.0, 9.0]), ("fp16", [0.5, 0.2], [0.1, 0.1])):
        rows.append({"kind": "reference", "name": "flax", "profile": prof,
                     "scores": [0.01, 0.02], "aggregate_only": [False, False]})
        for name, s in (("epsilon_1e3", eps), ("float16_block", f16)):
            rows.append({"kind": "pitfall", "name": name, "profile": prof, "scores": s,
                         "named": [v > 1 for v in s], "aggregate_only": [False, False]})
    rows.append({"kind": "pitfall", "name": "bwd_residual_dropped", "profile": "fp32",
                 "scores": [4.0, 4.0], "named": [True, True], "aggregate_only": [False] * 2})
    cov = {"kind": "resblock-coverage", "goldens": [{"path": "g.h5", "content_sha256": ""}],
           "profiles": ["fp32", "fp16"], "cases": cases, "rows": rows}
    text = text_report(cov)
    assert "  fp32       none" in text
    assert "  fp16       epsilon_1e3, float16_block" in text
    line = next(ln for ln in text.splitlines() if "bwd_residual_dropped" in ln)
    assert " - " in line  # no fp16 cell for the backward
