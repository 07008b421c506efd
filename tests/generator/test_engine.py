"""Tests for generator/engine.py: one shape group's arrays, the jit runner, the score."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from resblock.generator.engine import (
    ReferenceRunner,
    budget_arrays,
    compute_group,
    reference_score,
)
from resblock.golden.store import CASE_ARRAYS, expected_dtype, expected_shape
from resblock.spec import oracle, tolerance
from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES
from resblock.spec.derivation import derive_variables, derive_x
from resblock.spec.reference import apply_block

GROUP = [Case("functional", "normal", 2, 3, 5, 2, 0), Case("functional", "normal", 2, 3, 5, 2, 1),
         Case("stress", "offset", 2, 3, 5, 2, 0)]


@pytest.fixture(scope="module")
def runner():
    return ReferenceRunner(jax.devices("cpu")[0])


@pytest.fixture(scope="module")
def computed(runner):
    return compute_group(GROUP, runner, stages=True)


def test_group_has_every_case_array_stacked(computed):
    arrays, extras = computed
    assert set(arrays) == set(CASE_ARRAYS)
    for name, a in arrays.items():
        assert a.shape == (3,) + expected_shape(name, 2, 3, 5, 2), name
        assert a.dtype == expected_dtype(name), name
    assert len(extras) == 3 and set(extras[0]) == {"kappa", "ref_score"}


def test_without_stages_the_same_arrays_but_the_stage_data(computed, runner):
    from resblock.golden.store import STAGE_ARRAYS

    lean, extras = compute_group(GROUP, runner)
    full, full_extras = computed
    assert set(lean) == set(CASE_ARRAYS) - set(STAGE_ARRAYS) and len(STAGE_ARRAYS) == 24
    for name, a in lean.items():
        np.testing.assert_array_equal(a, full[name], err_msg=name)
    assert extras == full_extras


def test_rows_are_the_derived_inputs_reference_and_oracle(computed, runner):
    arrays, extras = computed
    prof = tolerance.profile("fp32")
    for row, case in enumerate(GROUP):
        x = derive_x(case)
        params, stats = derive_variables(case)
        np.testing.assert_array_equal(arrays["x"][row], x)
        for name in PARAM_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_array_equal(arrays[f"params/{name}"][row], params[layer][leaf])
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_array_equal(arrays[f"batch_stats_in/{name}"][row],
                                          stats[layer][leaf])
        y, new = runner(x, params, stats)
        np.testing.assert_array_equal(arrays["y"][row], y)
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_array_equal(arrays[f"batch_stats_out/{name}"][row],
                                          new[layer][leaf])
        ref = oracle.forward(x, params, stats)
        np.testing.assert_array_equal(arrays["oracle/y"][row], ref.y)
        for stage, a in ref.stages.items():
            np.testing.assert_array_equal(arrays[f"oracle/stages/{stage}"][row], a)
        assert extras[row]["kappa"] == ref.kappa
        row_arrays = {k: v[row] for k, v in arrays.items()}
        fresh = budget_arrays(x, params, stats, ref.stages)
        for name, a in fresh.items():
            np.testing.assert_array_equal(arrays[name][row], a)
        assert extras[row]["ref_score"] == reference_score(case, row_arrays, prof)
        assert 0 <= extras[row]["ref_score"] <= 1


def test_offset_case_has_the_highest_kappa(computed):
    _, extras = computed
    assert extras[2]["kappa"] > max(extras[0]["kappa"], extras[1]["kappa"])


def test_jit_runner_agrees_with_eager_apply(runner):
    case = GROUP[0]
    x = derive_x(case)
    params, stats = derive_variables(case)
    y, new = runner(x, params, stats)
    y2, new2 = apply_block(x, params, stats)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y, np.asarray(y2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(new["BatchNorm_1"]["var"], np.asarray(new2["BatchNorm_1"]["var"]),
                               rtol=1e-6)


def test_reference_score_sees_output_and_stats_errors(computed):
    arrays, extras = computed
    prof = tolerance.profile("fp32")
    row = {k: v[0].copy() for k, v in arrays.items()}
    case = GROUP[0]
    base = reference_score(case, row, prof)
    bad_y = dict(row, y=row["y"] * np.float32(1.01))
    assert reference_score(case, bad_y, prof) > 1
    key = "batch_stats_out/BatchNorm_1/var"
    bad_stats = dict(row, **{key: row[key] * np.float32(1.01)})
    assert reference_score(case, bad_stats, prof) > 1
    assert base <= 1
