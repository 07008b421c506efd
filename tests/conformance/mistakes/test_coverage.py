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
