"""Tests of spec/tolerance.py: profiles, the score, and the worst score of a case.

The rule (spec section 8): ``score = |got - ref| / bound`` per element with
``bound = max(budget + u_conv * budget_conv, tiny)`` from the golden file. Every number
below is worked out by hand.
"""

import numpy as np
import pytest

from resblock.spec import tolerance
from resblock.spec.constants import STAT_NAMES
from resblock.spec.error_model import FLOOR, bound_from

U = 2.0**-24


def test_profiles_are_the_three_of_the_spec():
    assert tolerance.PROFILES == ("fp32", "tf32", "bf16")


def test_profile_constants():
    fp32, tf32, bf16 = (tolerance.profile(n) for n in ("fp32", "tf32", "bf16"))
    assert fp32.u == U == 5.9604644775390625e-08
    assert fp32.u_conv == 0.0  # float32 conv inputs are exact: nothing is rounded
    assert tf32.u_conv == 2.0**-11 == 4.8828125e-04  # 10 mantissa bits
    assert bf16.u_conv == 2.0**-8 == 3.90625e-03  # 7 mantissa bits


def test_default_profile_is_fp32():
    assert tolerance.profile() == tolerance.profile("fp32")


def test_unknown_profile():
    with pytest.raises(KeyError, match="unknown profile 'fp16'"):
        tolerance.profile("fp16")


def test_bound_from_budgets_by_hand():
    budget = np.array([1e-6, 0.0, 3e-7], np.float32)
    conv = np.array([2.0, 0.0, 0.0], np.float32)
    np.testing.assert_array_equal(bound_from(budget, conv, 0.0),
                                  [np.float32(1e-6), FLOOR, np.float32(3e-7)])
    tf32 = bound_from(budget, conv, 2.0**-11)
    assert tf32[0] == pytest.approx(float(np.float32(1e-6)) + 2.0 * 2.0**-11, rel=1e-15)
    assert FLOOR == np.finfo(np.float32).tiny


def test_scores_by_hand():
    ref = np.array([2.0, -1.0, 0.0])
    got = np.array([2.5, -1.0, -0.125])
    s = tolerance.scores(got, ref, np.array([0.25, 1.0, 0.5]))
    np.testing.assert_array_equal(s, [2.0, 0.0, 0.25])


def test_score_one_is_at_the_bound_and_float32_input_is_widened():
    ref = np.array([1.0])
    got = np.array([1.0 + 2.0**-10], np.float32)
    assert tolerance.scores(got, ref, np.array([2.0**-10]))[0] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_got_scores_inf(bad):
    s = tolerance.scores(np.array([1.0, bad]), np.array([1.0, 1.0]), np.ones(2))
    assert s[0] == 0.0 and s[1] == np.inf


def test_max_score_never_hides_nan():
    # Python's max(0.5, nan) is 0.5: the kit's worst score must not be.
    assert tolerance.max_score(np.array([0.5, np.nan]), np.zeros(2), np.ones(2)) == np.inf
    assert tolerance.max_score(np.zeros(0), np.zeros(0), np.zeros(0)) == 0.0


class _Case:
    """A stand-in golden case: references 0 and bounds 1 for every tensor."""

    def __init__(self, n):
        self.n = n

    def reference(self, name):
        return np.zeros(self.n if name == "output" else 2)

    def bound(self, name, prof):
        return np.ones(self.n if name == "output" else 2)


def test_worst_score_covers_the_output_and_every_stat():
    gc = _Case(3)
    stats = {n: np.zeros(2) for n in STAT_NAMES}
    fp32 = tolerance.profile()
    assert tolerance.worst_score(gc, np.array([0.0, 0.5, 0.25]), stats, fp32) == 0.5
    stats["BatchNorm_1/var"] = np.array([0.0, 3.0])
    assert tolerance.worst_score(gc, np.zeros(3), stats, fp32) == 3.0
    assert tolerance.worst_score(gc, np.zeros(3), None, fp32) == 0.0  # stats not given
    stats["BatchNorm_0/mean"] = np.array([np.nan, 0.0])
    assert tolerance.worst_score(gc, np.zeros(3), stats, fp32) == np.inf


def test_worst_score_against_another_reference():
    """Pitfall diagnosis compares a result with a twin's under the case's bounds."""
    gc = _Case(2)
    stats = {n: np.ones(2) for n in STAT_NAMES}
    fp32 = tolerance.profile()
    assert tolerance.worst_score(gc, np.ones(2), stats, fp32, ref_y=np.ones(2),
                                 ref_stats=stats) == 0.0
