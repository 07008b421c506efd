"""Tests of spec/tolerance.py: the conformance bound and score, profile by profile.

Every expected number is worked out by hand from ``spec/constants.json``::

    bound = atol + rtol*|ref| + (kappa_factor*u*kappa + conv_factor*u_conv) * max|ref|

with u = 2^-24 and u_conv = 2^-24 (fp32), 2^-11 (tf32), 2^-8 (bf16).
"""

import numpy as np
import pytest

from resblock.spec import tolerance

U = 2.0**-24

# One small tensor used throughout: max|ref| = 2, and one element is exactly 0 (its bound
# is atol plus the global term only).
REF = np.array([2.0, -1.0, 0.0])
KAPPA = 3.0
# kappa term: kappa_factor * u * kappa * max|ref| = 100 * 2^-24 * 3 * 2 = 600 * 2^-24
KAPPA_TERM = 600 * U  # 3.5762786865234375e-05


def test_profiles_are_the_three_of_the_spec():
    assert tolerance.PROFILES == ("fp32", "tf32", "bf16")


def test_profile_constants():
    fp32, tf32, bf16 = (tolerance.profile(n) for n in ("fp32", "tf32", "bf16"))
    assert fp32.u == U == 5.9604644775390625e-08
    assert fp32.u_conv == U
    assert tf32.u_conv == 2.0**-11 == 4.8828125e-04  # 10 mantissa bits
    assert bf16.u_conv == 2.0**-8 == 3.90625e-03  # 7 mantissa bits
    assert fp32.output.conv_factor == 0.0 and fp32.stats.conv_factor == 0.0
    assert (tf32.output.conv_factor, bf16.output.conv_factor) == (6.0, 18.0)
    for p in (fp32, tf32, bf16):
        assert (p.output.atol, p.output.rtol, p.output.kappa_factor) == (3e-6, 3e-5, 100.0)
        assert (p.stats.atol, p.stats.rtol, p.stats.kappa_factor) == (1e-6, 1e-4, 100.0)


def test_default_profile_is_fp32():
    assert tolerance.profile() == tolerance.profile("fp32")


def test_fp32_output_bound_by_hand():
    p = tolerance.profile("fp32")
    got = tolerance.bound(REF, KAPPA, p.output, p)
    # atol 3e-6, rtol 3e-5, no conv term in fp32.
    want = [
        3e-6 + 3e-5 * 2 + KAPPA_TERM,  # 9.8762786865234375e-05
        3e-6 + 3e-5 * 1 + KAPPA_TERM,  # 6.8762786865234375e-05
        3e-6 + KAPPA_TERM,  # 3.8762786865234375e-05
    ]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    np.testing.assert_allclose(got[2], 3.8762786865234375e-05, rtol=1e-14)


def test_fp32_stats_bound_by_hand():
    p = tolerance.profile("fp32")
    got = tolerance.bound(REF, KAPPA, p.stats, p)
    want = [1e-6 + 2e-4 + KAPPA_TERM, 1e-6 + 1e-4 + KAPPA_TERM, 1e-6 + KAPPA_TERM]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "name, conv_term",
    [
        ("tf32", 6 * 2.0**-11 * 2),  # = 5.859375e-03
        ("bf16", 18 * 2.0**-8 * 2),  # = 0.140625
    ],
)
def test_reduced_precision_output_bound_by_hand(name, conv_term):
    p = tolerance.profile(name)
    got = tolerance.bound(REF, KAPPA, p.output, p)
    want = [
        3e-6 + 3e-5 * 2 + KAPPA_TERM + conv_term,
        3e-6 + 3e-5 * 1 + KAPPA_TERM + conv_term,
        3e-6 + KAPPA_TERM + conv_term,
    ]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


def test_conv_term_literal_values():
    tf32, bf16 = tolerance.profile("tf32"), tolerance.profile("bf16")
    ref = np.array([0.0, 2.0])
    # kappa 1 on a zero-kappa-factor copy isolates the conv term at the ref == 0 element.
    for prof, want in ((tf32, 5.859375e-03), (bf16, 0.140625)):
        terms = tolerance.Terms(atol=0.0, rtol=0.0, kappa_factor=0.0,
                                conv_factor=prof.output.conv_factor)
        assert tolerance.bound(ref, 1.0, terms, prof)[0] == want


@pytest.mark.parametrize("name", ["tf32", "bf16"])
def test_conv_term_carries_no_kappa(name):
    """Raising kappa moves a reduced-precision bound by the kappa term only (SPEC 8.4)."""
    p, fp32 = tolerance.profile(name), tolerance.profile("fp32")
    lo = tolerance.bound(REF, 1.0, p.output, p)
    hi = tolerance.bound(REF, 1001.0, p.output, p)
    np.testing.assert_allclose(hi - lo, 100 * U * 1000 * 2, rtol=1e-9)
    # ... and the gap to fp32 is the conv term, the same at every kappa.
    for kappa in (1.0, 1e4):
        gap = tolerance.bound(REF, kappa, p.output, p) - tolerance.bound(REF, kappa, fp32.output,
                                                                         fp32)
        np.testing.assert_allclose(gap, p.output.conv_factor * p.u_conv * 2, rtol=1e-9)


def test_global_term_uses_max_abs_over_the_whole_tensor():
    p = tolerance.profile("fp32")
    small = tolerance.bound(np.array([0.0, 1.0]), 1.0, p.output, p)[0]
    large = tolerance.bound(np.array([0.0, -1000.0]), 1.0, p.output, p)[0]
    assert small == pytest.approx(3e-6 + 100 * U * 1)
    assert large == pytest.approx(3e-6 + 100 * U * 1000)


def test_empty_tensor_bound_is_empty():
    p = tolerance.profile("fp32")
    assert tolerance.bound(np.zeros((0,)), 1.0, p.output, p).shape == (0,)


def test_scores_by_hand():
    p = tolerance.profile("fp32")
    b = tolerance.bound(REF, KAPPA, p.output, p)
    got = REF + np.array([b[0] / 2, -2 * b[1], 0.0])
    np.testing.assert_allclose(tolerance.scores(got, REF, KAPPA, p.output, p), [0.5, 2.0, 0.0],
                               rtol=1e-9)


def test_score_one_at_the_bound_and_float32_input():
    terms = tolerance.Terms(atol=0.25, rtol=0.5, kappa_factor=0.0, conv_factor=0.0)
    p = tolerance.profile("fp32")
    ref = np.array([0.0, 1.0])
    got = np.array([0.25, 1.75], dtype=np.float32)  # bound [0.25, 0.75]: exactly at it
    np.testing.assert_array_equal(tolerance.scores(got, ref, 1.0, terms, p), [1.0, 1.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_got_scores_inf(bad):
    p = tolerance.profile("fp32")
    got = np.array([2.0, bad, 0.0])
    s = tolerance.scores(got, REF, KAPPA, p.output, p)
    assert s[1] == np.inf
    assert s[0] == 0.0 and s[2] == 0.0


def test_unknown_profile_raises_key_error_naming_the_known_ones():
    with pytest.raises(KeyError, match="fp16.*fp32, tf32, bf16"):
        tolerance.profile("fp16")
