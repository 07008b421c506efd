"""Tests of conformance/judging/compare.py: per-tensor reports and the first diverging stage.

``compare_tensor`` is checked on hand-made arrays with a hand-made bound
(``bound = 0.25 + 0.5*|ref|``, exact in binary), so every expected number below is
worked out by hand. ``first_diverging_stage`` is
checked on a committed golden case with its own float64 stages perturbed at one stage.
"""

import json

import numpy as np
import pytest

from resblock.conformance.judging.compare import CaseResult, compare_tensor, first_diverging_stage
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile
from resblock.spec import tolerance

FP32 = tolerance.profile("fp32")


def simple(ref):
    return 0.25 + 0.5 * np.abs(np.asarray(ref, dtype=np.float64))


def test_counts_errors_and_worst_element_by_hand():
    ref = np.array([0.0, 1.0, 2.0, -4.0])  # bound [0.25, 0.75, 1.25, 2.25]
    got = np.array([0.125, 2.25, 2.0, -6.5])  # err [0.125, 1.25, 0, 2.5]
    # scores [0.5, 5/3, 0, 10/9]: two out of bound, the worst is element 1.
    t = compare_tensor("BatchNorm_0/mean", got, ref, simple(ref))
    assert not t.ok
    assert (t.size, t.n_bad) == (4, 2)
    assert t.share_bad == 0.5
    assert t.max_abs == 2.5
    assert t.max_rel == np.inf  # ref == 0 with a non-zero error: infinitely off
    assert t.worst_index == (1,)
    assert t.worst_score == pytest.approx(5 / 3)
    assert (t.expected, t.got, t.bound) == (1.0, 2.25, 0.75)


def test_max_rel_ignores_exact_zeros():
    ref = np.array([0.0, 2.0, -8.0])
    got = np.array([0.0, 3.0, -9.0])  # rel [0 (0/0 counts as exact), 0.5, 0.125]
    t = compare_tensor("BatchNorm_0/var", got, ref, simple(ref))
    assert t.max_rel == 0.5
    assert t.max_abs == 1.0
    # bounds [0.25, 1.25, 4.25]: scores [0, 0.8, 1/4.25] -> all within.
    assert t.ok and t.n_bad == 0 and t.worst_index == (1,)
    assert t.worst_score == pytest.approx(0.8)


def test_score_exactly_one_is_within_the_bound():
    ref = np.array([0.0, 1.0])
    t = compare_tensor("BatchNorm_1/mean", np.array([0.25, 1.75]), ref, simple(ref))
    assert t.ok and t.n_bad == 0 and t.worst_score == 1.0


def test_identical_arrays():
    ref = np.arange(6.0).reshape(1, 1, 2, 3)
    t = compare_tensor("output", ref.astype(np.float32), ref, np.full(ref.shape, 1e-30))
    assert t.ok and t.n_bad == 0 and t.max_abs == 0.0 and t.max_rel == 0.0
    assert t.worst_score == 0.0


def test_bound_is_per_element_and_floored():
    ref = np.array([2.0, -1.0, 0.0])
    from resblock.spec.error_model import bound_from

    # a zero budget is floored at float32's smallest normal number (1.18e-38)
    bound = bound_from(np.array([1e-3, 2e-6, 0.0]), np.zeros(3), 0.0)
    assert bound[2] == np.finfo(np.float32).tiny
    got = ref + np.array([0.0, 3 * 2e-6, 1e-40])
    t = compare_tensor("BatchNorm_1/var", got, ref, bound)
    assert t.bound == 2e-6
    assert t.worst_score == pytest.approx(3.0, rel=1e-9)
    assert t.worst_index == (1,) and t.n_bad == 1 and not t.ok


def test_committed_case_bound_is_its_stored_budget(gc):
    """compare_case's bound is budget + u_conv * budget_conv from the file, per element."""
    from resblock.conformance.judging.compare import compare_case

    y = gc.reference("output").copy()
    b = gc.arrays["budget/y"].astype(np.float64)
    y.flat[3] += 0.5 * b.flat[3]
    (t_out,) = compare_case(gc, y, None, FP32)
    assert t_out.n_bad == 0 and t_out.worst_score == pytest.approx(0.5, rel=1e-6)
    # ... but one element at half its worst-case bound is dozens of spreads away from
    # the oracle: more than a correct port's whole tensor errs (spec 8.5)
    sigma = gc.arrays["sigma/y"].astype(np.float64)
    q = (0.5 * b.flat[3] / sigma.flat[3]) ** 2 / y.size
    assert t_out.aggregate_q == pytest.approx(q, rel=1e-6)
    assert t_out.aggregate > 1 and not t_out.ok
    y = gc.reference("output").copy()
    y.flat[3] += sigma.flat[3]  # one spread: the aggregate test passes
    (t_out,) = compare_case(gc, y, None, FP32)
    assert t_out.ok and t_out.aggregate_q == pytest.approx(1 / y.size, rel=1e-6)
    tf32 = tolerance.profile("tf32-conv")
    want = b.flat[3] + 2.0**-11 * float(gc.arrays["budget_conv/y"].flat[3])
    assert gc.bound("output", tf32).flat[3] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("layout, want", [("nhwc", (0, 1, 2, 3)), ("nchw", (0, 3, 1, 2))])
def test_output_worst_index_in_the_implementations_layout(layout, want):
    ref = np.ones((1, 2, 3, 4))  # NHWC, as the runner passes it after converting back
    got = ref.copy()
    got[0, 1, 2, 3] = 10.0
    t = compare_tensor("output", got, ref, simple(ref), layout)
    assert t.worst_index == want
    assert (t.expected, t.got, t.n_bad) == (1.0, 10.0, 1)


def test_stat_index_is_not_converted_under_nchw():
    got = np.array([0.0, 0.0, 5.0])
    t = compare_tensor("BatchNorm_0/mean", got, np.zeros(3), simple(np.zeros(3)), "nchw")
    assert t.worst_index == (2,)


def test_nan_and_inf_score_inf():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    got = np.array([0.0, np.nan, 2.0, np.inf])
    t = compare_tensor("BatchNorm_0/mean", got, ref, simple(ref))
    assert not t.ok
    assert t.n_bad == 2
    assert t.worst_score == np.inf
    assert t.max_abs == np.inf and t.max_rel == np.inf
    assert t.worst_index == (1,)  # the first non-finite element
    assert np.isnan(t.got) and t.expected == 1.0
    d = t.to_dict()
    # JSON has no inf/nan: they become strings, and the dict survives strict JSON.
    assert d["got"] == "nan" and d["worst_score"] == "inf" and d["max_abs"] == "inf"
    assert d["worst_index"] == [1] and d["share_bad"] == 0.5
    json.dumps(d, allow_nan=False)


def test_case_result_worst_score_and_failing_tensors():
    z = np.zeros(2)
    ok = compare_tensor("BatchNorm_0/mean", z, z, simple(z))
    bad = compare_tensor("BatchNorm_0/var", np.array([0.0, 1.0]), z, simple(z))
    r = CaseResult(id="x", family="seeded", status="fail", tensors=[ok, bad])
    assert r.worst_score == 4.0  # 1 / 0.25
    assert r.failing_tensors == [bad]
    assert CaseResult(id="x", family="seeded", status="error").worst_score == 0.0


# --- first_diverging_stage on a committed case ---------------------------------------

STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum")


@pytest.fixture(scope="module")
def gc():
    with GoldenFile(default_goldens()[0]) as gf:
        yield gf.case("functional-normal-n2-4x4-f4-s0")


def _stages(gc):
    return {s: gc.arrays[f"oracle/stages/{s}"].astype(np.float32) for s in STAGES}


def test_oracle_stages_do_not_diverge(gc):
    assert first_diverging_stage(gc, _stages(gc), FP32) is None
    assert first_diverging_stage(gc, {}, FP32) is None


@pytest.mark.parametrize("stage", STAGES)
def test_perturbed_stage_is_the_first_diverging_one(gc, stage):
    inter = _stages(gc)
    inter[stage] = inter[stage].copy()
    inter[stage][1, 2, 3, 0] += 0.5
    assert first_diverging_stage(gc, inter, FP32) == stage


def test_earliest_of_two_perturbed_stages_is_named(gc):
    inter = _stages(gc)
    for s in ("relu1", "bn2"):
        inter[s] = inter[s] + 1.0
    assert first_diverging_stage(gc, inter, FP32) == "relu1"


def test_missing_stages_are_skipped_and_wrong_shape_diverges(gc):
    inter = _stages(gc)
    del inter["conv1"], inter["bn1"]
    inter["conv2"] = inter["conv2"][:1]
    assert first_diverging_stage(gc, inter, FP32) == "conv2"
