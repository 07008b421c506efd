"""Tests of spec/error_model.py: the per-element float32 error model.

By hand on a case with one value per channel (every term of the model is then a short
formula), the structural facts the model rests on (what is exactly zero at N*H*W = 1,
linearity in u_conv, the safety factor), and its stated purpose: every float32 algorithm
of the zoo stays inside it (tests/conformance/mistakes/test_zoo.py runs the zoo on goldens).
"""

import numpy as np
import pytest

from resblock.spec import error_model as em
from resblock.spec import oracle
from resblock.spec.constants import EPSILON, MOMENTUM

U = 2.0**-24


def _single_value_case():
    """N = H = W = C = 1: x = 2, kernel centre 0.5 (other taps see only padding)."""
    k = np.full((3, 3, 1, 1), 7.0, np.float32)
    k[1, 1, 0, 0] = 0.5
    params = {
        "Conv_0": {"kernel": k, "bias": np.array([0.25], np.float32)},
        "BatchNorm_0": {"scale": np.array([2.0], np.float32), "bias": np.array([-0.5],
                                                                               np.float32)},
        "Conv_1": {"kernel": k, "bias": np.array([0.0], np.float32)},
        "BatchNorm_1": {"scale": np.array([1.0], np.float32), "bias": np.array([0.75],
                                                                               np.float32)},
    }
    stats = {b: {"mean": np.array([0.5], np.float32), "var": np.array([2.0], np.float32)}
             for b in ("BatchNorm_0", "BatchNorm_1")}
    x = np.full((1, 1, 1, 1), 2.0, np.float32)
    return x, params, stats


def test_accumulation_factor():
    assert em.g(1) == 0.0  # a "sum" of one term adds nothing
    assert em.g(4) == 2.0 and em.g(10) == pytest.approx(10**0.5)


def test_float32_constants_of_a_port():
    # 1 - float32(0.99) = 0.0099999904632568..., not 0.01: a port's batch weight is off
    # by 9.5e-9 absolute (16 u relative to 0.01), and the model says so.
    assert em.D_ONE_MINUS_MOMENTUM == pytest.approx(9.5367431640625e-09, rel=1e-6)
    assert em.D_MOMENTUM == pytest.approx(9.5367431640625e-09, rel=1e-6)
    assert em.D_EPSILON == abs(float(np.float32(1e-5)) - 1e-5)


def test_one_value_per_channel_by_hand():
    x, params, stats = _single_value_case()
    ref = oracle.forward(x, params, stats)
    e, s = em.raw_budgets(x, params, stats, ref.stages)
    c1 = 2.0 * 0.5 + 0.25  # only the centre tap meets a non-padded value
    assert ref.stages["conv1"].item() == c1
    # conv: u max(sqrt(9C + 1) |x| * |w|, K_T T) + u sqrt(9C + 1) |b|, where the transform
    # term T = |x| sqrt(sum of the nine taps' squares) wins: a Winograd or FFT convolution
    # mixes the eight taps of 7 into the one product. TF32 sensitivity sqrt(2/3) |x w|.
    t = 2.0 * (8 * 49.0 + 0.25) ** 0.5
    assert em.TRANSFORM_BUDGET * t > 10**0.5 * 1.0
    assert e["conv1"].item() == pytest.approx(
        U * (em.TRANSFORM_BUDGET * t + 10**0.5 * 0.25), rel=1e-6)
    assert s["conv1"].item() == pytest.approx((2 / 3) ** 0.5 * 1.0, rel=1e-6)
    # BN at one value: c - mean is exactly 0, so neither the conv error nor the variance
    # reaches the output; only the folded form's rounding of |c inv| and |mean inv| does.
    inv = 2.0 / np.sqrt(EPSILON)
    want = U * (3 * c1 * inv + 3 * 0.5)  # |c inv| + 2|mean inv| + |beta| + 2|z|, z = beta
    assert ref.stages["bn1"].item() == -0.5
    assert e["bn1"].item() == pytest.approx(want, rel=1e-9)
    assert s["bn1"].item() == 0.0  # a rounded conv input cannot move the output here
    # running mean: (1 - m) * conv error + rounding of the update + the constants' error
    m = MOMENTUM
    new_mean = m * 0.5 + (1 - m) * c1
    want_mean = ((1 - m) * e["conv1"].item()
                 + U * (2 * m * 0.5 + 2 * (1 - m) * c1 + new_mean)
                 + em.D_MOMENTUM * 0.5 + em.D_ONE_MINUS_MOMENTUM * c1)
    assert e["BatchNorm_0/mean"].item() == pytest.approx(want_mean, rel=1e-9)
    # running var: the batch variance is exactly 0, only the update's rounding remains
    new_var = m * 2.0
    want_var = U * (2 * m * 2.0 + new_var) + em.D_MOMENTUM * 2.0
    assert e["BatchNorm_0/var"].item() == pytest.approx(want_var, rel=1e-9)
    # sum = bn2 + x: its rounding adds u |sum|; the output passes it through the ReLU
    assert e["sum"].item() == pytest.approx(e["bn2"].item() + U * abs(0.75 + 2.0), rel=1e-12)
    assert e["output"].item() == e["sum"].item()


def test_budgets_are_the_safety_factor_times_the_model_rounded_up(smoke_case):
    x, params, stats = smoke_case
    ref = oracle.forward(x, params, stats)
    e, s = em.raw_budgets(x, params, stats, ref.stages)
    b = em.budgets(x, params, stats, ref.stages)
    assert em.SAFETY == 8.0
    assert set(b.fp32) == set(b.conv) == set(em.TENSORS)
    for name in em.TENSORS:
        assert b.fp32[name].dtype == np.float32
        lo = em.SAFETY * e[name]
        assert np.all(b.fp32[name] >= lo) and np.all(b.fp32[name] <= lo * (1 + 1e-5) + 1e-45)
        assert np.all(b.conv[name] >= em.SAFETY * s[name])
    # the bound of a reduced-precision profile is linear in its unit roundoff
    u_c = 2.0**-11
    np.testing.assert_allclose(b.bound("output", u_c), b.fp32["output"].astype(np.float64)
                               + u_c * b.conv["output"].astype(np.float64))


def test_centred_errors_cancel_only_at_one_value(smoke_case):
    """At N*H*W > 1 the conv error reaches the BN output with |inv| weight; doubling the
    input doubles conv budgets (the model is homogeneous in the data's scale)."""
    x, params, stats = smoke_case
    ref = oracle.forward(x, params, stats)
    e, _ = em.raw_budgets(x, params, stats, ref.stages)
    p2 = {k: dict(v) for k, v in params.items()}
    p2["Conv_0"] = {"kernel": params["Conv_0"]["kernel"], "bias": 2 * params["Conv_0"]["bias"]}
    ref2 = oracle.forward(2 * x, p2, stats)
    e2, _ = em.raw_budgets(2 * x, p2, stats, ref2.stages)
    np.testing.assert_allclose(e2["conv1"], 2 * e["conv1"], rtol=1e-6)
    assert np.all(e["bn1"] > 0)


@pytest.fixture(scope="module")
def smoke_case():
    from resblock.generator.batched import derive_cases
    from resblock.spec.cases import Case

    (x, params, stats), = derive_cases([Case("functional", "normal", 2, 3, 5, 4, 0)])
    return x, params, stats


@pytest.mark.parametrize("shape, axes, pads", [
    ((2, 3, 4, 5), (-3, -2), ((0, 0), (1, 1), (1, 1), (0, 0))),
    ((2, 1, 3, 4, 5), (-3, -2), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0))),
    ((3, 2, 4, 5), (2, 3), ((0, 0), (0, 0), (1, 1), (1, 1))),
    ((2, 3, 4), (1, 2), ((0, 0), (1, 1), (1, 1))),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pad_hw_is_np_pad_bit_for_bit(shape, axes, pads, dtype):
    from resblock.spec.error_model import pad_hw

    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    a.flat[0] = -0.0  # a signed zero inside survives
    got, want = pad_hw(a, axes), np.pad(a, pads)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))


def test_tile_square_is_every_window_input_paired_with_every_tap():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 4, 5, 3))
    k = rng.standard_normal((3, 3, 3, 2))
    got = em.tile_square(np.square(a), np.square(k))
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 4, 5, 2))
    for n, i, j, f in np.ndindex(*want.shape):
        win = ap[n, i:i + 3, j:j + 3, :]  # (3, 3, C): the output's window
        want[n, i, j, f] = sum((win[..., c] ** 2).sum() * (k[..., c, f] ** 2).sum()
                               for c in range(3))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_transform_term_decides_only_where_an_output_has_few_products():
    """Dense inputs of one magnitude: T^2 is about 9 sum (a w)^2, under the direct sum's
    term, so the budget is the direct sum's to the bit. One nonzero input: the larger of
    ``sqrt(K + 1) |x w_centre|`` and ``K_T |x| sqrt(sum of the taps' squares)``; the
    transform term wins where the centre tap is small."""
    rng = np.random.default_rng(4)
    k = rng.standard_normal((3, 3, 4, 5)) / 6.0
    b = np.zeros(5)
    dense = rng.standard_normal((2, 6, 6, 4))
    e, _ = em.conv_budgets(dense, None, None, k, b)
    direct = np.float32(U * em.g(37)) * em.abs_conv(np.abs(dense).astype(np.float32),
                                                     np.abs(k))
    np.testing.assert_array_equal(e, direct)
    one = np.zeros((1, 1, 1, 4))
    one[0, 0, 0, 2] = 1.5
    e, _ = em.conv_budgets(one, None, None, k, b)
    k[1, 1, 2, 0] = 0.0  # output 0: only the transform term is left
    e, _ = em.conv_budgets(one, None, None, k, b)
    transform = U * em.TRANSFORM_BUDGET * 1.5 * np.sqrt(np.square(k[:, :, 2, :]).sum(axis=(0, 1)))
    direct = U * em.g(37) * 1.5 * np.abs(k[1, 1, 2, :])
    np.testing.assert_allclose(e[0, 0, 0], np.maximum(transform, direct), rtol=1e-6)
    assert e[0, 0, 0, 0] > 0 and (transform > direct).sum() >= 1
