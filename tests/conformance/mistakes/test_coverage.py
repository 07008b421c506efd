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


def test_a_mistake_no_case_can_show_is_not_let_through_and_says_what_it_needs():
    """A grid without one value per channel cannot test PyTorch's refusal of it (the port
    computes what a correct one does at two): the matrix says what the mistake needs,
    does not list it as let through, and `coverage` does not fail on it (it did on a
    held-out 64-case grid, 0/0 of 64)."""
    from resblock.conformance.mistakes.coverage import problems, text_report

    cases = [{"id": f"c{i}", "family": "functional", "group": "g"} for i in range(2)]
    rows = [{"kind": "reference", "name": "flax", "profile": "fp32", "scores": [0.1, 0.1],
             "aggregate_only": [False, False]}]
    for name, s in (("torch_one_value_per_channel", [None, None]),
                    ("sequential_f32_stats", [None, None]),
                    ("bwd_relu_one_at_zero", [None, None]),
                    ("epsilon_1e3", [2.0, 3.0])):
        rows.append({"kind": "pitfall", "name": name, "profile": "fp32", "scores": s,
                     "named": [v is not None for v in s], "aggregate_only": [False, False]})
    cov = {"kind": "resblock-coverage", "goldens": [{"path": "g.h5", "content_sha256": ""}],
           "profiles": ["fp32"], "cases": cases, "rows": rows}
    text = text_report(cov)
    line = {n: next(ln for ln in text.splitlines() if ln.strip().startswith(n))
            for n in ("torch_one_value_per_channel", "sequential_f32_stats",
                      "bwd_relu_one_at_zero")}
    assert line["torch_one_value_per_channel"].endswith(
        "(no case here can show it: it needs exactly 1 value per channel)")
    assert line["sequential_f32_stats"].endswith(
        f"(no case here can show it: it needs at least {2 ** 16} values per channel)")
    assert line["bwd_relu_one_at_zero"].endswith(
        "it needs at least 2 values per channel, a ReLU input exactly 0 (inputs zeroinit "
        "or deadchan))")
    assert "  fp32       none" in text
    assert problems(cov, min_cases=2) == []
