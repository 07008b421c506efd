"""Tests of spec/error_store.py (the storage model of the fp16 and bf16 profiles, spec
section 8.2): per element and in the aggregate test, a block that stores every value in
float16 (bfloat16) and accumulates in float32 conforms under its profile and is rejected
under fp32; the model's own-rounding terms by hand; float16's range."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.conformance.mistakes.variants import make_forward
from resblock.spec import error_model, error_spread, error_store, oracle, tolerance
from resblock.spec.cases import Case
from resblock.spec.constants import STAT_NAMES
from resblock.spec.derivation import derive_variables, derive_x
from resblock.spec.error_model import SAFETY, bound_from


def _case(*fields):
    case = Case(*fields)
    x = derive_x(case)
    params, stats = derive_variables(case)
    return case, x, params, stats


def _worst(case, x, params, stats, name, pname):
    """(worst element score, worst aggregate score) of variant ``name`` under ``pname``
    over the output and the four running statistics."""
    prof = tolerance.profile(pname)
    ref = oracle.forward(x, params, stats)
    b = error_model.budgets(x, params, stats, ref.stages)
    sp = error_spread.forward_spread(x, params, stats, ref.stages, keep_errors=False)
    st = error_store.model(x, params, stats, ref.stages)
    y, new = make_forward(name)(x, params, stats)
    got = {"output": y} | {s: new[s.split("/")[0]][s.split("/")[1]] for s in STAT_NAMES}
    refs = {"output": ref.y} | {s: ref.batch_stats[s.split("/")[0]][s.split("/")[1]]
                                for s in STAT_NAMES}
    element = aggregate = 0.0
    for t in got:
        bound = bound_from(b.fp32[t], b.conv[t], prof.u_conv, st.budget[t], prof.u_store)
        element = max(element, tolerance.max_score(got[t], refs[t], bound))
        aggregate = max(aggregate, tolerance.aggregate_score(
            got[t], refs[t], sp.sigma[t], sp.sigma_conv[t], prof.u_conv, case.features,
            st.sigma[t], prof.u_store))
    return element, aggregate


CASES = [("functional", "normal", 4, 8, 8, 32, 0), ("functional", "offset", 2, 6, 6, 16, 1),
         ("functional", "lowamp", 2, 8, 8, 8, 2), ("seeded", "normal", 1, 1, 1, 4, 0),
         ("seeded", "lowamp", 1, 8, 8, 4, 1)]


@pytest.mark.parametrize("fields", CASES, ids=lambda f: "-".join(map(str, f)))
def test_whole_float16_and_bfloat16_blocks_conform_under_their_profile_only(fields):
    case, x, params, stats = _case(*fields)
    for name, own in (("float16_block", "fp16"), ("bfloat16_block", "bf16")):
        element, aggregate = _worst(case, x, params, stats, name, own)
        assert element < 0.5 and aggregate < 0.5, (name, element, aggregate)
        element, aggregate = _worst(case, x, params, stats, name, "fp32")
        assert max(element, aggregate) > 1.0, (name, element, aggregate)
    # bf16 admits what fp16 admits (both unit roundoffs larger)
    assert max(_worst(case, x, params, stats, "float16_block", "bf16")) < 0.5
    # A float32 port conforms under every profile, a bfloat16 one not under fp16
    for pname in tolerance.PROFILES:
        assert max(_worst(case, x, params, stats, "correct_float32", pname)) < 0.2


def test_a_bfloat16_block_is_rejected_under_fp16():
    case, x, params, stats = _case("functional", "normal", 4, 8, 8, 32, 0)
    assert max(_worst(case, x, params, stats, "bfloat16_block", "fp16")) > 1.0


def test_float16_overflow_is_outside_the_profile():
    """Inputs of size ~3000 give batch variances ~1e6, beyond float16's 65504: a block that
    stores its statistics in float16 returns inf there, and the profile, which assumes
    stored values inside the type's range, rejects it. bfloat16 has float32's range."""
    case, x, params, stats = _case("stress", "large", 2, 6, 6, 4, 0)
    assert np.max(np.abs(x)) < 65504 < np.max(oracle.forward(x, params, stats).stages["conv1"]
                                              .var(axis=(0, 1, 2)))
    assert _worst(case, x, params, stats, "float16_block", "fp16")[0] == np.inf
    assert max(_worst(case, x, params, stats, "bfloat16_block", "bf16")) < 0.5


def test_own_rounding_terms_by_hand():
    """Every stored value contributes at least its own rounding ``|v| + tiny`` (per unit
    u_s, before S); the residual sum adds x's and the sum's."""
    case, x, params, stats = _case("functional", "normal", 2, 4, 4, 4, 0)
    ref = oracle.forward(x, params, stats)
    t = error_store.raw_budgets(x, params, stats, ref.stages)
    tiny = error_store.TINY
    assert tiny == float(np.finfo(np.float16).smallest_normal)
    for stage in ("conv1", "bn1", "conv2", "bn2", "sum"):
        assert np.all(t[stage] >= np.abs(ref.stages[stage]) + tiny), stage
    assert np.all(t["sum"] >= t["bn2"] + np.abs(x) + np.abs(ref.stages["sum"]) + tiny
                  - 1e-12)
    np.testing.assert_array_equal(t["output"], t["sum"])
    np.testing.assert_array_equal(t["relu1"], t["bn1"])
    st = error_store.model(x, params, stats, ref.stages)
    for name in error_model.TENSORS:
        np.testing.assert_allclose(st.budget[name], SAFETY * np.asarray(t[name]), rtol=1e-5)
        assert st.budget[name].dtype == np.float32
    for name in error_store.SPREAD_TENSORS:
        assert np.all(st.sigma[name] > 0) and np.all(np.isfinite(st.sigma[name]))


def test_storage_terms_scale_with_the_values():
    """First order: scaling x and the conv biases by 2 (BatchNorm undoes it) doubles the
    conv stages' own rounding and leaves the normalised stages' terms nearly unchanged."""
    case, x, params, stats = _case("functional", "normal", 2, 4, 4, 4, 0)
    ref = oracle.forward(x, params, stats)
    t = error_store.raw_budgets(x, params, stats, ref.stages)
    p2 = {k: dict(v) for k, v in params.items()}
    p2["Conv_0"]["bias"] = 2 * np.asarray(params["Conv_0"]["bias"])
    ref2 = oracle.forward(2 * x, p2, stats)
    t2 = error_store.raw_budgets(2 * x, p2, stats, ref2.stages)
    np.testing.assert_allclose(t2["conv1"] - error_store.TINY,
                               2 * (t["conv1"] - error_store.TINY), rtol=1e-9)
    np.testing.assert_allclose(t2["bn1"], t["bn1"], rtol=1e-3)
