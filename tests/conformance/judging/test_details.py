"""Tests of conformance/judging/details.py: score levels, pooling, and the evidence the runner
collects for the worst failing cases (error maps, running-stat vectors) for the HTML
report. Kept cheap: a few committed cases selected with -k.
"""

import numpy as np
import pytest

from resblock.conformance.judging import details
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.reporting.report import json_report
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens
from resblock.schemas import validate

GOLDENS = default_goldens()
GOOD = make_forward("correct_float32")


def run_fn(fn, keyword, **kw):
    cfg = CheckConfig(target="test_details:fn", keyword=keyword, **kw)
    return run_check(cfg, InProcess(fn, cfg.api, cfg.layout), GOLDENS)


def test_levels_keep_the_bound_as_the_boundary():
    lv = details.levels([0.0, 1e-9, 0.5, 1.0, 1.0001, 10.0, 1e12, np.inf, np.nan])
    assert lv.tolist() == [-64, -64, -2, 0, 1, 8, 64, 64, 64]
    assert details.score_of_level(0) == 1.0
    assert details.score_of_level(8) == pytest.approx(10.0)


def test_pool_max_keeps_the_worst_element():
    a = np.zeros((70, 33), dtype=np.int64)
    a[69, 32] = 5
    pooled, step = details.pool_max(a)
    assert step == [3, 2] and pooled.shape == (24, 17)
    assert pooled.max() == 5 and pooled[-1, -1] == 5


def test_plain_check_collects_no_details():
    run = run_fn(make_forward("valid_padding"), "16x16")
    assert run.count("fail") and not run.details
    assert all("details" not in c for c in json_report(run)["cases"])


def test_padding_mistake_maps_show_a_ring():
    run = run_fn(make_forward("valid_padding"), "16x16", details=2)
    assert len(run.details) == 2
    doc = json_report(run)
    validate(doc, "check-report")
    for case in doc["cases"]:
        assert case["status"] == "fail" and case["repro"].startswith("resblock check")
        if "details" not in case:
            continue
        out = case["details"]["maps"][0]
        assert out["tensor"] == "output" and len(out["maps"]) == details.MAX_MAPS
        typical = np.array(out["typical"]).reshape(out["rows"], out["cols"])
        ring = np.ones(typical.shape, bool)
        ring[2:-2, 2:-2] = False
        assert typical[ring].mean() > typical[~ring].mean() + 2  # a quarter decade
        assert [s["name"] for s in case["details"]["stats"]] == [
            "BatchNorm_0/mean", "BatchNorm_0/var", "BatchNorm_1/mean", "BatchNorm_1/var"]


def test_statistics_mistake_leaves_the_output_within_bound_and_shows_in_the_vectors():
    run = run_fn(make_forward("torch_unbiased_running_var"), "8x8 and stress", details=1)
    (detail,) = run.details.values()
    assert max(detail["maps"][0]["channel_worst"]) <= 0
    by_name = {s["name"]: s for s in detail["stats"]}
    var = by_name["BatchNorm_0/var"]
    assert min(var["levels"]) > 0
    assert all(g > e for g, e in zip(var["got"], var["expected"], strict=True))
    assert max(by_name["BatchNorm_0/mean"]["levels"]) <= 0


def with_wrong_conv1(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    return y * 1.5, stats, {"conv1": np.zeros_like(x)}


def test_first_diverging_stage_is_mapped_when_intermediates_are_returned():
    run = run_fn(with_wrong_conv1, "seeded-normal-n1-8x8-f16-s0", details=4)
    (res,) = run.results
    assert res.stage == "conv1"
    assert [m["tensor"] for m in run.details[res.id]["maps"]] == ["output", "conv1"]


def test_large_maps_are_pooled_and_channels_bounded():
    scores = np.full((2, 100, 40, 300), 0.5)
    scores[1, 99, 39, 7] = 1e3
    m = details.tensor_maps("output", scores)
    assert (m["rows"], m["cols"], m["step"]) == (25, 20, [4, 2])
    assert len(m["maps"]) == details.MAX_MAPS and len(m["channel_worst"]) == 300
    assert (m["maps"][0]["sample"], m["maps"][0]["channel"]) == (1, 7)
    assert m["maps"][0]["levels"][-1] == 24
