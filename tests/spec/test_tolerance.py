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


def test_profiles_are_the_five_of_the_spec():
    assert tolerance.PROFILES == ("fp32", "tf32-conv", "bf16-conv", "fp16", "bf16")


def test_profile_constants():
    fp32, tf32, bf16c, fp16, bf16 = (tolerance.profile(n) for n in tolerance.PROFILES)
    assert fp32.u == U == 5.9604644775390625e-08
    assert fp32.u_conv == 0.0  # float32 conv inputs are exact: nothing is rounded
    assert tf32.u_conv == 2.0**-11 == 4.8828125e-04  # 10 mantissa bits
    assert bf16c.u_conv == 2.0**-8 == 3.90625e-03  # 7 mantissa bits
    assert fp32.u_store == tf32.u_store == bf16c.u_store == 0.0  # float32 storage
    # A low type stores and feeds the convolutions: both unit roundoffs are the type's.
    assert fp16.u_conv == fp16.u_store == float(np.finfo(np.float16).eps) / 2 == 2.0**-11
    assert bf16.u_conv == bf16.u_store == 2.0**-8
    assert not fp32.stores_low and fp16.stores_low and bf16.stores_low


def test_renamed_profile_points_to_its_new_name():
    with pytest.raises(tolerance.ProfileError, match="renamed 'tf32-conv'") as e:
        tolerance.profile("tf32")
    assert "--profile tf32-conv" in str(e.value)  # what to do
    assert "fp32, tf32-conv, bf16-conv, fp16, bf16" in str(e.value)  # what is expected


def test_looser_is_a_partial_order_of_the_two_unit_roundoffs():
    assert tolerance.looser("bf16", "bf16-conv") and tolerance.looser("fp16", "tf32-conv")
    assert tolerance.looser("bf16", "fp16") and tolerance.looser("tf32-conv", "fp32")
    assert not tolerance.looser("fp16", "bf16-conv")  # neither admits all of the other
    assert not tolerance.looser("bf16-conv", "fp16")
    assert not tolerance.looser("fp32", "fp32")


def test_default_profile_is_fp32():
    assert tolerance.profile() == tolerance.profile("fp32")


def test_unknown_profile():
    with pytest.raises(KeyError, match="unknown profile 'fp8'"):
        tolerance.profile("fp8")


def test_bound_from_budgets_by_hand():
    budget = np.array([1e-6, 0.0, 3e-7], np.float32)
    conv = np.array([2.0, 0.0, 0.0], np.float32)
    np.testing.assert_array_equal(bound_from(budget, conv, 0.0),
                                  [np.float32(1e-6), FLOOR, np.float32(3e-7)])
    tf32 = bound_from(budget, conv, 2.0**-11)
    assert tf32[0] == pytest.approx(float(np.float32(1e-6)) + 2.0 * 2.0**-11, rel=1e-15)
    assert FLOOR == np.finfo(np.float32).tiny


def test_bound_adds_the_storage_term_per_unit_u_store():
    budget = np.array([1e-6, 0.0], np.float32)
    conv = np.array([2.0, 0.0], np.float32)
    store = np.array([4.0, 0.5], np.float32)
    fp16 = tolerance.profile("fp16")
    b = bound_from(budget, conv, fp16.u_conv, store, fp16.u_store)
    assert b[0] == pytest.approx(float(np.float32(1e-6)) + 6.0 * 2.0**-11, rel=1e-15)
    assert b[1] == 0.5 * 2.0**-11
    # u_store 0 (fp32, tf32-conv, bf16-conv) ignores the storage budgets, even absent.
    np.testing.assert_array_equal(bound_from(budget, conv, 0.0, None, 0.0),
                                  bound_from(budget, conv, 0.0))


def test_aggregate_adds_the_storage_spread_in_quadrature():
    ref = np.zeros(4)
    got = np.full(4, 5.0)
    one = np.ones(4)
    # (3 * 1)^2 + (4 * 1)^2 = 25: Q = 25 / 25
    q = tolerance.aggregate_statistic(got, ref, 0 * one, 3 * one, 1.0, 4 * one, 1.0)
    assert q == pytest.approx(1.0)
    assert tolerance.aggregate_statistic(got, ref, 0 * one, 3 * one, 1.0) == \
        pytest.approx(25.0 / 9.0)


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


def test_profile_names_have_one_source():
    """constants.json names the profiles; the report schema, the CLI option and the
    pytest plugin read or restate exactly those."""
    import json
    from pathlib import Path

    from resblock.options import profile_names

    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "schemas" / "check-report.schema.json").read_text())
    assert tuple(schema["properties"]["profile"]["enum"]) == tolerance.PROFILES
    assert profile_names() == tolerance.PROFILES


def test_cli_refuses_a_renamed_profile_with_its_new_name():
    from click.testing import CliRunner

    from resblock.cli import cli

    res = CliRunner().invoke(cli, ["check", "--impl", "x:y", "--profile", "tf32"])
    assert res.exit_code == 2
    assert "renamed 'tf32-conv'" in res.output and "--profile tf32-conv" in res.output
