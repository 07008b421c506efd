"""Tests of spec/store_range.py: when a case is outside a storage profile (spec 8.6, 12.4)."""

import numpy as np
import pytest

from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile
from resblock.spec import store_range, tolerance
from resblock.spec.store_range import BFLOAT16, FLOAT16, first_overflow, storage_type

LARGE = {"stress-large-n1-8x8-f8-s0", "stress-large-n2-6x6-f4-s0"}


def test_overflow_thresholds_are_where_round_to_nearest_gives_inf():
    assert FLOAT16.overflow_at == 65520.0
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(FLOAT16.overflow_at))
    assert np.float16(np.nextafter(FLOAT16.overflow_at, 0.0)) == np.float16(65504.0)
    assert FLOAT16.fmax == float(np.finfo(np.float16).max)
    assert BFLOAT16.fmax == pytest.approx(3.3895313892515355e38, rel=1e-15)
    assert BFLOAT16.overflow_at == BFLOAT16.fmax + 2.0 ** 119
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert float(ml_dtypes.finfo(ml_dtypes.bfloat16).max) == BFLOAT16.fmax
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(BFLOAT16.overflow_at).astype(ml_dtypes.bfloat16))


def test_profiles_that_store_float32_have_no_range_to_leave():
    for name in ("fp32", "tf32-conv", "bf16-conv"):
        assert storage_type(tolerance.profile(name)) is None
    assert storage_type(tolerance.profile("fp16")) is FLOAT16
    assert storage_type(tolerance.profile("bf16")) is BFLOAT16
    assert first_overflow({"x": (np.array([1e9]), 0.0)}, None) is None


def test_a_given_value_overflows_at_the_rounding_threshold_not_at_fmax():
    assert first_overflow({"x": (np.array([-65519.0, 3.0]), 0.0)}, FLOAT16) is None
    o = first_overflow({"x": (np.array([1.0, -65520.0]), 0.0)}, FLOAT16)
    assert (o.value, o.magnitude, o.margin) == ("x", 65520.0, 0.0)
    assert o.reason == "x reaches 6.55e+04 > float16's 65504 (a conforming port stores inf)"


def test_a_computed_value_within_its_bound_of_the_threshold_is_outside():
    vals = {"stage conv1": (np.array([65000.0, 65500.0]), np.array([1.0, 25.0]))}
    o = first_overflow(vals, FLOAT16)
    assert (o.value, o.magnitude, o.margin) == ("stage conv1", 65500.0, 25.0)
    assert "within its error bound 25 of float16's overflow at 65520" in o.reason
    vals["stage conv1"] = (np.array([65500.0]), np.array([19.0]))
    assert first_overflow(vals, FLOAT16) is None


def test_the_value_reaching_furthest_is_named():
    vals = {"a": (np.array([7e4]), 0.0), "b": (np.array([4.1e6]), 0.0),
            "c": (np.array([np.nan, 2.0]), 0.0)}
    o = first_overflow(vals, FLOAT16)
    assert (o.value, o.magnitude) == ("b", 4.1e6)
    assert o.reason == "b reaches 4.1e+06 > float16's 65504 (a conforming port stores inf)"


def test_training_values_hold_the_batch_statistics_with_their_bound():
    c = np.array([[[[0.0, 1.0]], [[400.0, 3.0]]]])  # (1, 2, 1, 2): channel 0 var 40000
    zero = np.zeros(2)
    oracle = {"conv1": c, "conv2": c * 2.0, "BatchNorm_0/mean": zero, "BatchNorm_1/mean": zero,
              "BatchNorm_0/var": zero, "BatchNorm_1/var": zero}
    bounds = {k: np.full(2, 0.5) for k in oracle}
    vals = store_range.training_values(np.ones((1, 2, 1, 2)), {"Conv_0": {"bias": zero}},
                                       {k: zero for k in oracle if "/" in k}, oracle, bounds)
    v, err = vals["batch variance of BatchNorm_1"]
    np.testing.assert_allclose(v, [160000.0, 4.0])
    np.testing.assert_allclose(err, 0.5 / 0.01)  # the running variance's bound / (1 - M)
    assert set(vals) >= {"x", "bias of Conv_0", "running variance of BatchNorm_0 (given)",
                         "running mean of BatchNorm_1 (updated)", "stage conv2",
                         "batch mean of BatchNorm_0"}
    o = first_overflow(vals, FLOAT16)
    assert o.value == "batch variance of BatchNorm_1" and o.magnitude == 160000.0


@pytest.fixture(scope="module")
def committed():
    with GoldenFile(default_goldens()[0]) as gf:
        yield [gc.detached() for gc in gf.iter_cases()]


@pytest.mark.parametrize("inference", [False, True])
def test_committed_set_outside_float16_only_where_the_variance_overflows(committed, inference):
    fp16, bf16 = tolerance.profile("fp16"), tolerance.profile("bf16")
    outside = {gc.id: gc.outside_profile(fp16, inference) for gc in committed}
    outside = {k: v for k, v in outside.items() if v is not None}
    assert set(outside) == LARGE
    for o in outside.values():
        assert o.magnitude > 5e5 and o.value.endswith(
            "variance of BatchNorm_0" if inference else "batch variance of BatchNorm_0")
    assert not any(gc.outside_profile(bf16, inference) for gc in committed)
    assert not any(gc.outside_profile(tolerance.profile("fp32"), inference)
                   for gc in committed)
