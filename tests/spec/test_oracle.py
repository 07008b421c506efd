"""Tests for spec/oracle.py: the NumPy float64 block against the Flax reference, its
stages, its convolution orientation and kappa."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.generator.grid import preset_cases
from resblock.spec import oracle, tolerance
from resblock.spec.cases import Case
from resblock.spec.constants import EPSILON, STAT_NAMES
from resblock.spec.derivation import derive_variables, derive_x
from resblock.spec.reference import apply_block

# 22 explicit cases over batches 1/2/4, shapes incl. 1x1 and 3x5, features 1, 2, 3, 4, 8.
# Few distinct shapes on purpose: each new shape costs a JAX compile of the derivation.
RANDOM_CASES = [
    Case(fam, "normal", n, h, w, f, seed)
    for fam, n, h, w, f, seeds in [
        ("functional", 4, 4, 4, 4, (0, 1)), ("functional", 4, 3, 5, 4, (0,)),
        ("functional", 2, 3, 5, 2, (0, 1)), ("functional", 1, 1, 1, 1, (0,)),
        ("seeded", 1, 1, 1, 1, (0,)), ("functional", 4, 2, 2, 1, (0, 1)),
        ("functional", 4, 1, 1, 8, (0, 1)), ("functional", 1, 3, 5, 8, (0,)),
        ("seeded", 1, 3, 5, 8, (0, 1)), ("functional", 2, 3, 3, 3, (0, 1)),
        ("seeded", 1, 4, 4, 4, (1, 2)), ("functional", 2, 4, 4, 4, (1, 2)),
        ("functional", 1, 3, 5, 2, (1,)), ("seeded", 1, 3, 5, 2, (1,)),
    ]
    for seed in seeds
]
SMOKE = preset_cases("smoke")


def _run(case):
    x = derive_x(case)
    params, stats = derive_variables(case)
    y, new = apply_block(x, params, stats)
    return x, params, stats, np.asarray(y), new, oracle.forward(x, params, stats)


def test_random_case_table_covers_the_axes():
    assert len(RANDOM_CASES) >= 20
    assert {c.n for c in RANDOM_CASES} == {1, 2, 4}
    assert {c.features for c in RANDOM_CASES} == {1, 2, 3, 4, 8}
    assert {(c.h, c.w) for c in RANDOM_CASES} >= {(1, 1), (3, 5)}
    assert len({c.id for c in RANDOM_CASES}) == len(RANDOM_CASES)


@pytest.mark.parametrize("case", SMOKE + RANDOM_CASES, ids=lambda c: c.id)
def test_oracle_matches_flax(case):
    x, params, stats, y, new, ref = _run(case)
    assert ref.y.dtype == np.float64 and ref.y.shape == y.shape == case.x_shape
    if case.inputs == "normal":
        np.testing.assert_allclose(y, ref.y, rtol=0, atol=1e-4)
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_allclose(np.asarray(new[layer][leaf]), ref.batch_stats[layer][leaf],
                                       rtol=0, atol=1e-5, err_msg=name)
    # every case, normal or not, passes the spec's own fp32 gate (the error model's bound)
    from resblock.spec import error_model

    prof = tolerance.profile("fp32")
    b = error_model.budgets(x, params, stats, ref.stages)
    assert tolerance.max_score(y, ref.y, b.bound("output")) <= 1.0
    for name in STAT_NAMES:
        layer, leaf = name.split("/")
        s = tolerance.max_score(np.asarray(new[layer][leaf]), ref.batch_stats[layer][leaf],
                                b.bound(name, prof.u_conv))
        assert s <= 1.0, name


@pytest.mark.parametrize("case", SMOKE + RANDOM_CASES[:6], ids=lambda c: c.id)
def test_stages_are_consistent(case):
    x, params, stats, _, _, ref = _run(case)
    st = ref.stages
    assert set(st) == {"conv1", "bn1", "relu1", "conv2", "bn2", "sum"}
    np.testing.assert_array_equal(st["relu1"], np.maximum(st["bn1"], 0.0))
    np.testing.assert_array_equal(ref.y, np.maximum(st["sum"], 0.0))
    np.testing.assert_array_equal(st["sum"], st["bn2"] + np.asarray(x, np.float64))
    np.testing.assert_allclose(
        st["conv2"],
        oracle.conv3x3(st["relu1"], np.float64(params["Conv_1"]["kernel"]),
                       np.float64(params["Conv_1"]["bias"])), rtol=0, atol=0)
    # the batch-normalised stage has per-channel mean = BN bias and std ~= BN scale
    bn = st["bn1"]
    count = case.n * case.h * case.w
    np.testing.assert_allclose(bn.mean(axis=(0, 1, 2)), params["BatchNorm_0"]["bias"],
                               rtol=0, atol=1e-9)
    if count > 1:
        var = st["conv1"].var(axis=(0, 1, 2))
        want = np.float64(params["BatchNorm_0"]["scale"]) ** 2 * var / (var + EPSILON)
        np.testing.assert_allclose(bn.var(axis=(0, 1, 2)), want, rtol=1e-9)


def test_conv3x3_is_a_zero_padded_cross_correlation():
    x = np.arange(1, 1 + 3 * 4, dtype=np.float64).reshape(1, 3, 4, 1)
    kernel = np.zeros((3, 3, 1, 1))
    kernel[0, 0, 0, 0] = 1.0  # top-left tap reads x[i-1, j-1] (no kernel flip)
    out = oracle.conv3x3(x, kernel, np.array([0.5]))[0, :, :, 0]
    want = np.zeros((3, 4))
    want[1:, 1:] = x[0, :-1, :-1, 0]
    np.testing.assert_array_equal(out, want + 0.5)
    # full 3x3 ones kernel at the centre pixel sums its 8-neighbourhood
    ones = np.ones((3, 3, 1, 1))
    s = oracle.conv3x3(x, ones, np.zeros(1))[0, :, :, 0]
    assert s[1, 1] == x[0, 0:3, 0:3, 0].sum()
    assert s[0, 0] == x[0, 0:2, 0:2, 0].sum()


def test_conv3x3_contracts_input_channels_into_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 2))
    k = rng.standard_normal((3, 3, 2, 5))
    out = oracle.conv3x3(x, k, np.zeros(5))
    assert out.shape == (2, 3, 3, 5)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.einsum("nhwc,hwcf->nf", xp[:, 0:3, 0:3, :], k)  # output pixel (0, 0)
    np.testing.assert_allclose(out[:, 0, 0, :], want, rtol=1e-12)


def test_batch_norm_train_moments_and_update():
    y = np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2, 1)
    out, (new_m, new_v), (m, v) = oracle.batch_norm_train(
        y, np.array([2.0]), np.array([0.5]), np.array([1.0]), np.array([4.0]))
    assert m[0] == 3.0 and v[0] == 3.5  # biased: ((-2)^2+1+0+9)/4
    np.testing.assert_allclose(new_m, [0.99 * 1.0 + 0.01 * 3.0], rtol=1e-15)
    np.testing.assert_allclose(new_v, [0.99 * 4.0 + 0.01 * 3.5], rtol=1e-15)
    np.testing.assert_allclose(out.ravel(), (y.ravel() - 3.0) / np.sqrt(3.5 + 1e-5) * 2 + 0.5,
                               rtol=1e-15)


def test_two_pass_variance_survives_a_huge_offset():
    rng = np.random.default_rng(1)
    y = (1e6 + rng.standard_normal((1, 8, 8, 2))).astype(np.float64)
    _, var = oracle.batch_stats_of(y)
    np.testing.assert_allclose(var, y.var(axis=(0, 1, 2)), rtol=1e-9)


def test_kappa_is_one_with_one_value_per_channel():
    case = Case("stress", "offset", 1, 1, 1, 4, 0)  # would be huge with more values
    ref = oracle.forward(derive_x(case), *derive_variables(case))
    assert ref.kappa == 1.0
    assert oracle.kappa_of([(np.array([5.0]), np.array([0.0]))], count=1) == 1.0


def test_kappa_formula():
    moments = [(np.array([1.0, 3.0]), np.array([1.0, 2.0])), (np.array([0.5]), np.array([0.0]))]
    want = 1 + max(1 / (1 + EPSILON), 9 / (2 + EPSILON), 0.25 / EPSILON)
    assert oracle.kappa_of(moments, count=4) == pytest.approx(want, rel=1e-15)


def test_kappa_is_moderate_for_lowamp_inputs_since_the_conv_bias_is_at_input_scale():
    """Spec 2.0: Conv_0's bias is drawn at the input's amplitude, so a low-amplitude
    channel's mean stays comparable to its spread (spec 1.0 drew 0.5 N(0,1): kappa 1e4)."""
    case = Case("stress", "lowamp", 2, 4, 4, 4, 0)
    params, stats = derive_variables(case)
    bias = np.abs(params["Conv_0"]["bias"])
    assert np.min(bias) > 0 and np.max(bias) < 5e-3  # random, non-zero, at 1e-3 scale
    ref = oracle.forward(derive_x(case), params, stats)
    assert 1.0 < ref.kappa < 1e2


def test_kappa_is_moderate_for_normal_inputs():
    case = Case("functional", "normal", 2, 4, 4, 4, 8)
    ref = oracle.forward(derive_x(case), *derive_variables(case))
    assert 1.0 < ref.kappa < 1e3


def test_conv3x3_in_blocks_of_samples_is_bit_identical_to_the_whole_tensor():
    """5 samples of 30x30 (4500 positions) are evaluated in two blocks of whole samples:
    every element is the same nine products summed in the same order."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 30, 30, 3))
    kernel = rng.standard_normal((3, 3, 3, 2))
    bias = rng.standard_normal(2)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    whole = np.zeros((5, 30, 30, 2))
    for i in range(3):
        for j in range(3):
            whole += xp[:, i:i + 30, j:j + 30, :] @ kernel[i, j]
    whole += bias
    assert np.array_equal(oracle.conv3x3(x, kernel, bias), whole)
