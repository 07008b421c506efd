"""Tests of conformance/mistakes/variants.py (and its pitfall table,
conformance/mistakes/pitfalls.py).

Every variant is compared with the Flax reference ``resblock.spec.reference.apply_block``
on seeded random cases with non-init parameters (``random_case`` in tests/conftest.py).
Correct variants must match it; each wrong variant must miss it on its revealing case,
and on the shapes where a pitfall is invisible it must still match (which documents
what a golden set needs in order to catch each pitfall).
"""

import dataclasses

import numpy as np
import pytest

from resblock.conformance.mistakes import pitfalls
from resblock.conformance.mistakes.variants import (
    CORRECT_VARIANTS,
    VARIANTS,
    WRONG_SWITCHES,
    Variant,
    _round_mantissa,
    make_forward,
)
from resblock.spec.reference import apply_block

OUT_TOL = 1e-4  # max abs error on outputs for N(0, 1) inputs
STATS_TOL = 1e-5  # max abs error on the running mean/var
REVEAL = 10.0  # a wrong variant must miss by this factor times the tolerance

# Cases: (seed, batch, height, width, features, scale); see random_case.
GENERIC = (0, 2, 3, 5, 4, 1.0)  # batch > 1, non-square, C > 1, small n = N*H*W = 30
TINY_VAR = (0, 2, 4, 4, 3, 0.01)  # conv outputs with variance ~1e-4
LARGE = (1, 4, 6, 6, 8, 1.0)
SINGLE = (0, 1, 1, 1, 1, 1.0)  # one value per channel: N*H*W == 1
ONE_BY_ONE = (0, 2, 1, 1, 3, 1.0)  # 1x1 spatial, only the kernel's centre tap is used
ONE_FEATURE = (0, 2, 3, 5, 1, 1.0)
BATCH_ONE = (0, 1, 3, 5, 4, 1.0)
CORRECT_CASES = [GENERIC, TINY_VAR, LARGE, SINGLE, ONE_BY_ONE, ONE_FEATURE, BATCH_ONE]

# The revealing setup of each wrong variant, and why it reveals it.
REVEALING = {
    "missing_residual": GENERIC,  # any x != 0
    "relu_before_add": GENERIC,  # needs some bn2 < 0 where x > 0
    "preactivation": GENERIC,  # any case
    "eval_mode_bn": GENERIC,  # incoming running stats != batch stats
    "unbiased_variance_norm": GENERIC,  # small n: the gap is ~1/(2n) relative
    "torch_unbiased_running_var": GENERIC,  # small n, var ~1: gap 0.01*var/(n-1)
    "momentum_swapped": GENERIC,  # running stats != batch stats
    "torch_default_momentum": GENERIC,  # running stats != batch stats
    "stale_stats": GENERIC,  # running stats != batch stats
    "epsilon_1e3": GENERIC,  # channel variance not >> 1e-3 (here ~1)
    "epsilon_outside_sqrt": TINY_VAR,  # gap ~1e-5/sqrt(var): needs var <~ 1e-2
    "per_sample_stats": GENERIC,  # batch > 1
    "valid_padding": GENERIC,  # any case with N*H*W > 1
    "circular_padding": GENERIC,  # border values != 0
    "reflect_padding": GENERIC,  # border values != 0
    "kernel_flipped": GENERIC,  # spatial > 1x1 and a non-symmetric kernel
    "kernel_hw_swapped": GENERIC,  # spatial > 1x1 and kernel != its transpose
    "kernel_io_swapped": GENERIC,  # features > 1
    "kernel_reshaped": GENERIC,  # features > 1 (shows on 1x1 spatial too)
    "missing_conv_bias": GENERIC,  # conv bias != 0; only the running mean shows it
    "tf32_conv": GENERIC,  # any non-trivial data: rounding errors ~1e-3
    "bf16_conv": GENERIC,  # rounding errors ~1e-2
    "layout_confusion": GENERIC,  # C > 1 and H*W > 1
    "epsilon_1e4": TINY_VAR,  # gap ~(1e-4 - 1e-5)/(2 var): needs var not >> 1e-4
    "epsilon_1e6": TINY_VAR,  # gap ~9e-6/(2 var)
    "momentum_0999": GENERIC,  # running stats != batch stats
    "momentum_095": GENERIC,
    # A kernel scale a changes the output only through eps / (a^2 var): low variance.
    "init_no_truncation_correction": TINY_VAR,
    "init_he_scale": TINY_VAR,
    "init_fan_in_c": TINY_VAR,
    "float16_activations": GENERIC,  # ~5e-4 relative rounding at every stage
    "float16_block": GENERIC,  # the same, and the inputs, parameters and statistics
    "bfloat16_block": GENERIC,  # ~4e-3 relative rounding of every stored value
    "equinox_ema_mode": GENERIC,  # incoming running stats != batch stats
    "haiku_zero_debias": GENERIC,  # any case: the stats come back 100x
    "biased_running_var_converted": GENERIC,  # small n, var ~1: gap 0.01*var/n
    "whole_running_var_converted": GENERIC,  # small n: 0.99*old shrunk by old/n
    # sequential_f32_stats is a correct algorithm on small reductions (INVISIBLE below);
    # tests/conformance/mistakes/test_zoo.py shows where it leaves the error model's envelope.
}

# Pitfalls that a case cannot reveal: the variant matches the reference there.
INVISIBLE = [
    ("kernel_flipped", ONE_BY_ONE),  # the flip keeps the centre tap
    ("kernel_hw_swapped", ONE_BY_ONE),
    ("layout_confusion", ONE_BY_ONE),  # (N,1,1,C) and (N,C,1,1) share memory order
    ("layout_confusion", ONE_FEATURE),
    ("kernel_io_swapped", ONE_FEATURE),
    ("kernel_reshaped", ONE_FEATURE),  # HWIO and OIHW share memory order when C == F == 1
    ("per_sample_stats", BATCH_ONE),
    ("epsilon_outside_sqrt", GENERIC),  # gap ~1e-5 at var ~1: below OUT_TOL
    ("torch_unbiased_running_var", TINY_VAR),  # gap 0.01*var/(n-1) ~ 3e-8
    ("sequential_f32_stats", GENERIC),  # 30 values per channel: as accurate as pairwise
]

# With one value per channel both BatchNorms output their bias whatever the convs did:
# y = relu(BatchNorm_1.bias + x). Every conv pitfall is invisible in the output there.
INVISIBLE_OUTPUT_AT_SINGLE = [
    "kernel_flipped",
    "kernel_hw_swapped",
    "kernel_io_swapped",
    "kernel_reshaped",
    "valid_padding",
    "circular_padding",
    "reflect_padding",
    "missing_conv_bias",
    "tf32_conv",
    "bf16_conv",
    "layout_confusion",
    "epsilon_1e3",
    "epsilon_outside_sqrt",
    "per_sample_stats",
    "torch_unbiased_running_var",
]

_REF: dict = {}


@pytest.fixture(scope="module")
def reference(make_case):
    """``reference(case) -> (x, params, stats, y_ref, stats_ref)``, cached per case."""

    def get(case):
        if case not in _REF:
            x, params, stats = make_case(*case)
            y, new = apply_block(x, params, stats)
            new = {b: {k: np.asarray(a) for k, a in d.items()} for b, d in new.items()}
            _REF[case] = (x, params, stats, np.asarray(y), new)
        return _REF[case]

    return get


def errors(variant, case, reference):
    """(max abs output error, max abs stats error) of ``variant`` against Flax."""
    x, params, stats, y_ref, stats_ref = reference(case)
    y, new = make_forward(variant)(x, params, stats)
    assert y.shape == y_ref.shape and y.dtype == np.float32
    stats_err = max(
        float(np.max(np.abs(new[b][k] - stats_ref[b][k])))
        for b in stats_ref
        for k in ("mean", "var")
    )
    return float(np.max(np.abs(y - y_ref))), stats_err


def test_variant_names_are_the_contract():
    expected = """missing_residual relu_before_add preactivation eval_mode_bn
        unbiased_variance_norm torch_unbiased_running_var momentum_swapped
        torch_default_momentum stale_stats epsilon_1e3 epsilon_outside_sqrt valid_padding
        circular_padding reflect_padding kernel_flipped kernel_hw_swapped kernel_io_swapped
        kernel_reshaped
        missing_conv_bias per_sample_stats tf32_conv bf16_conv layout_confusion
        epsilon_1e4 epsilon_1e6 momentum_0999 momentum_095 sequential_f32_stats
        init_no_truncation_correction init_he_scale init_fan_in_c float16_activations
        float16_block bfloat16_block equinox_ema_mode haiku_zero_debias biased_running_var_converted
        whole_running_var_converted
        torch_one_value_per_channel
        """.split()
    assert sorted(WRONG_SWITCHES) == sorted(expected)
    assert set(VARIANTS) == set(expected) | {
        "correct_float32",
        "correct_float64",
        "correct_two_pass",
    }
    for name in expected:
        assert VARIANTS[name].wrong_switches() == (name,)
    assert all(v.is_correct for v in CORRECT_VARIANTS.values())
    # torch_one_value_per_channel raises instead: test_torch_one_value_per_channel_...
    assert set(REVEALING) == set(expected) - {"sequential_f32_stats",
                                              "torch_one_value_per_channel"}


@pytest.mark.parametrize("case", CORRECT_CASES, ids=str)
@pytest.mark.parametrize("name", sorted(CORRECT_VARIANTS))
def test_correct_variant_matches_flax(name, case, reference):
    out_err, stats_err = errors(name, case, reference)
    assert out_err <= OUT_TOL
    assert stats_err <= STATS_TOL


@pytest.mark.parametrize("name", sorted(REVEALING))
def test_wrong_variant_is_revealed(name, reference):
    case = REVEALING[name]
    out_err, stats_err = errors(name, case, reference)
    affects = pitfalls.lookup(name).affects
    if name in ("tf32_conv", "bf16_conv"):
        # Precision, not logic: beyond the tolerance yet far below a logic error's O(1).
        assert OUT_TOL < out_err < 0.1
    elif "output" in affects:
        assert out_err > REVEAL * OUT_TOL
    else:  # stats-only pitfalls leave the output intact
        assert out_err <= OUT_TOL
        assert stats_err > REVEAL * STATS_TOL


@pytest.mark.parametrize(("name", "case"), INVISIBLE, ids=lambda p: str(p))
def test_pitfall_invisible_on_case(name, case, reference):
    out_err, stats_err = errors(name, case, reference)
    assert out_err <= OUT_TOL
    assert stats_err <= STATS_TOL


def test_single_value_per_channel_output_ignores_convs(reference):
    x, params, _, y_ref, _ = reference(SINGLE)
    np.testing.assert_allclose(y_ref, np.maximum(params["BatchNorm_1"]["bias"] + x, 0), atol=1e-6)
    for name in INVISIBLE_OUTPUT_AT_SINGLE:
        assert errors(name, SINGLE, reference)[0] <= OUT_TOL, name


def test_unbiased_variance_with_one_value_gives_nan(reference):
    # PyTorch raises here ("Expected more than 1 value per channel when training");
    # the variants return NaN so that the runner reports a non-finite result.
    x, params, stats, _, _ = reference(SINGLE)
    y, _ = make_forward("unbiased_variance_norm")(x, params, stats)
    assert np.isnan(y).all()
    y, new = make_forward("torch_unbiased_running_var")(x, params, stats)
    assert np.isfinite(y).all()
    assert (
        np.isnan(new["BatchNorm_0"]["var"]).all() and np.isfinite(new["BatchNorm_0"]["mean"]).all()
    )


def test_unbiased_running_var_hides_on_large_batches(make_case):
    # n = 8*16*16 = 2048: the gap 0.01*var/(n-1) falls under STATS_TOL, so goldens need
    # small-n cases to catch PyTorch's running_var convention.
    x, params, stats = make_case(0, 8, 16, 16, 2)
    _, good = make_forward("correct_float32")(x, params, stats)
    _, bad = make_forward("torch_unbiased_running_var")(x, params, stats)
    gap = np.abs(bad["BatchNorm_1"]["var"] - good["BatchNorm_1"]["var"])
    np.testing.assert_allclose(gap, 0.01 * good_batch_var(x, params, stats) / 2047, rtol=1e-2)
    assert gap.max() < STATS_TOL


def good_batch_var(x, params, stats):
    """BatchNorm_1's biased batch variance, recovered from the correct running update."""
    _, new = make_forward("correct_float64", keep_dtype=True)(x, params, stats)
    return (
        new["BatchNorm_1"]["var"] - 0.99 * stats["BatchNorm_1"]["var"].astype(np.float64)
    ) / 0.01


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 3), (3, 2, 2, 2)])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_degenerate_shapes_run(name, shape, make_case):
    x, params, stats = make_case(3, *shape)
    n = shape[0] * shape[1] * shape[2]
    if name == "torch_one_value_per_channel" and n == 1:  # PyTorch's refusal, reproduced
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            make_forward(name)(x, params, stats)
        return
    y, new = make_forward(name)(x, params, stats)
    assert y.shape == shape and y.dtype == np.float32
    assert set(new) == {"BatchNorm_0", "BatchNorm_1"}
    for b in new.values():
        assert b["mean"].shape == b["var"].shape == (shape[-1],)
    if n > 1 or name not in ("unbiased_variance_norm", "torch_unbiased_running_var",
                             "whole_running_var_converted"):
        assert np.isfinite(y).all() and all(
            np.isfinite(a).all() for b in new.values() for a in b.values()
        )


def test_keep_dtype_returns_compute_dtype(make_case):
    x, params, stats = make_case(*GENERIC)
    y, new = make_forward("correct_float64", keep_dtype=True)(x, params, stats)
    assert y.dtype == np.float64 and new["BatchNorm_1"]["var"].dtype == np.float64
    y32, _ = make_forward("correct_float64")(x, params, stats)
    assert y32.dtype == np.float32
    assert np.array_equal(y32, y.astype(np.float32))


def test_round_mantissa_ties_to_even():
    one = np.float32(1.0)
    # TF32 keeps 10 mantissa bits: the spacing near 1 is 2**-10.
    vals = np.array(
        [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-20, -(1 + 3 * 2**-11)], np.float32
    )
    want = np.array([1, 1 + 2**-9, 1 + 2**-10, -(1 + 2**-9)], np.float32)
    assert np.array_equal(_round_mantissa(vals, 13), want)
    # bfloat16 keeps 7: 1 + 2**-8 is a tie and goes to 1.
    assert _round_mantissa(np.float32(1 + 2**-8), 16) == one
    assert _round_mantissa(np.float32(1 + 2**-8 + 2**-9), 16) == np.float32(1 + 2**-7)
    special = np.array([np.inf, -np.inf, np.nan, 0.0], np.float32)
    out = _round_mantissa(special, 13)
    assert np.isinf(out[:2]).all() and np.isnan(out[2]) and out[3] == 0


def test_layout_confusion_is_a_reshape(make_case):
    x, params, stats = make_case(*GENERIC)
    n, h, w, c = x.shape
    y, _ = make_forward("layout_confusion")(x, params, stats)
    misread = x.reshape(n, c, h, w).transpose(0, 2, 3, 1)
    y_misread, _ = make_forward("correct_float32")(misread, params, stats)
    assert np.array_equal(y, y_misread.transpose(0, 3, 1, 2).reshape(n, h, w, c))


def test_invalid_variants_are_refused():
    with pytest.raises(ValueError, match="mutually exclusive"):
        Variant(tf32_conv=True, bf16_conv=True)
    with pytest.raises(ValueError, match="dtype"):
        Variant(dtype="float16")
    with pytest.raises(KeyError, match="unknown variant"):
        make_forward("correct_float16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Variant().missing_residual = True


def test_wrong_channel_count_is_refused(make_case):
    x, params, stats = make_case(*GENERIC)
    with pytest.raises(ValueError, match="channels"):
        make_forward(Variant())(x[..., :2], params, stats)


def test_pitfall_table_matches_variants():
    assert pitfalls.names() == tuple(p.name for p in pitfalls.PITFALLS)
    assert set(pitfalls.names()) == set(WRONG_SWITCHES)
    for p in pitfalls.PITFALLS:
        assert VARIANTS[p.variant].wrong_switches() == (p.name,)
        assert p.stage in pitfalls.STAGES
        assert p.explanation and p.fix and p.title
    stats_only = {p.name for p in pitfalls.PITFALLS if p.affects == ("batch_stats",)}
    assert stats_only == {
        "torch_unbiased_running_var",
        "momentum_swapped",
        "torch_default_momentum",
        "stale_stats",
        "missing_conv_bias",
        "momentum_0999",
        "momentum_095",
        "haiku_zero_debias",
        "biased_running_var_converted",
        "whole_running_var_converted",
        "equinox_ema_mode",
    }
    with pytest.raises(KeyError, match="Did you mean 'momentum_swapped'"):
        pitfalls.lookup("momentum_swaped")
    assert pitfalls.lookup("tf32_conv").stage == "conv1"
    assert "allow_tf32" in pitfalls.lookup("tf32_conv").explanation


def test_torch_one_value_per_channel_raises_only_there(make_case):
    """The twin raises PyTorch's own message at N*H*W == 1 and is correct elsewhere."""
    x, params, stats = make_case(0, 1, 1, 1, 3)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when "
                                         r"training, got input size torch\.Size\(\[1, 3, 1, 1\]\)"):
        make_forward("torch_one_value_per_channel")(x, params, stats)
    x, params, stats = make_case(0, 2, 1, 1, 3)
    y, new = make_forward("torch_one_value_per_channel")(x, params, stats)
    y_ok, new_ok = make_forward("correct_float32")(x, params, stats)
    assert np.array_equal(y, y_ok)
    assert all(np.array_equal(new[b][k], new_ok[b][k]) for b in new for k in new[b])


def test_equinox_ema_twin_normalises_with_the_batch_and_stores_the_batch_stats(make_case):
    x, params, stats = make_case(*GENERIC)
    y, new = make_forward("equinox_ema_mode")(x, params, stats)
    y_ok, new_ok = make_forward("correct_float32")(x, params, stats)
    np.testing.assert_array_equal(y, y_ok)  # the output is right
    for bn in new:  # the stored statistics are the batch's: (ok - 0.99 old) / 0.01
        batch = (new_ok[bn]["mean"] - 0.99 * stats[bn]["mean"]) / 0.01
        np.testing.assert_allclose(new[bn]["mean"], batch, rtol=1e-3, atol=1e-4)
        assert not np.allclose(new[bn]["mean"], new_ok[bn]["mean"], atol=1e-3)


def test_whole_running_var_conversion_shrinks_the_carried_over_part_too(make_case):
    x, params, stats = make_case(*GENERIC)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    _, new = make_forward("whole_running_var_converted")(x, params, stats)
    _, torch_like = make_forward("torch_unbiased_running_var")(x, params, stats)
    for bn in new:
        np.testing.assert_allclose(new[bn]["var"], torch_like[bn]["var"] * (n - 1) / n,
                                   rtol=1e-6)
        np.testing.assert_array_equal(new[bn]["mean"], torch_like[bn]["mean"])


def test_reflect_padding_mirrors_the_border(make_case):
    x, params, stats = make_case(*GENERIC)
    y_r, _ = make_forward("reflect_padding")(x, params, stats)
    y_c, _ = make_forward("circular_padding")(x, params, stats)
    y_ok, _ = make_forward("correct_float32")(x, params, stats)
    assert not np.allclose(y_r, y_ok, atol=1e-3) and not np.allclose(y_r, y_c, atol=1e-3)


def test_whole_low_blocks_store_every_value_in_their_type(make_case):
    """The float16 and bfloat16 twins return values their type holds exactly (each stored
    value rounded once, ties to even), and the bfloat16 rounding is ml_dtypes'."""
    import ml_dtypes

    from resblock.conformance.mistakes.variants import _to_bfloat16

    x, params, stats = make_case(*GENERIC)
    for name, dt in (("float16_block", np.float16), ("bfloat16_block", ml_dtypes.bfloat16)):
        y, new = make_forward(name)(x, params, stats)
        for a in (y, new["BatchNorm_0"]["mean"], new["BatchNorm_1"]["var"]):
            np.testing.assert_array_equal(a.astype(dt).astype(np.float32), a)
    a = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 1e3
    np.testing.assert_array_equal(_to_bfloat16(a),
                                  a.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_pytorch_refusal_applies_only_at_one_value_per_channel():
    """Above one value per channel the refusing port computes what a correct one does:
    no case there can reject it, so it is not applicable (and not offered as a name)."""
    from resblock.conformance.mistakes.pitfalls import applies, lookup, needs
    from resblock.spec.cases import Case

    p = lookup("torch_one_value_per_channel")
    assert applies(p, Case("stress", "normal", 1, 1, 1, 4, 0))
    assert not applies(p, Case("stress", "normal", 2, 1, 1, 4, 0))
    assert not applies(p, Case("functional", "normal", 1, 1, 2, 4, 0))
    assert needs(p) == "exactly 1 value per channel"
    assert needs(lookup("epsilon_1e3")) == "any case"
    assert needs(lookup("init_he_scale")) == "a case of family seeded"
    assert needs(lookup("sequential_f32_stats")) == f"at least {2 ** 16} values per channel"
    assert "at least 2 features" in needs(lookup("bwd_conv_kernel_grad_transposed"))
