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


PLACEMENT = """
import jax, numpy as np
from resblock.generator.engine import ReferenceRunner
from resblock.generator.batched import derive_cases
from resblock.spec.cases import Case
from resblock.spec.derivation import derive_y_bar
case = Case("functional", "normal", 2, 3, 5, 4, 0)
(x, params, stats), = derive_cases([case])
y_bar = derive_y_bar(case)
cpu0, cpu1 = jax.devices("cpu")[:2]
for grad in (False, True):
    here, there = ReferenceRunner(cpu0, grad=grad), ReferenceRunner(cpu1, grad=grad)
    assert (here._put, there._put) == (False, True)
    args = (x, params, stats) + ((y_bar,) if grad else ())
    a, b = here(*args), there(*args)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert isinstance(u, np.ndarray) and np.array_equal(u, v)
    assert np.array_equal(here.infer(x, params, stats), there.infer(x, params, stats))
print("OK")
"""


def test_runner_puts_inputs_only_on_a_device_that_is_not_the_default():
    """The default device's runner hands NumPy inputs to JAX as they are (no device_put
    of their tree); a runner on another device puts them there; both give the same
    bits (two host devices, a fresh process)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", PLACEMENT], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-2000:]
