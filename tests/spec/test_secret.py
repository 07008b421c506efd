"""Tests for spec/secret.py: the NumPy derivation of the graders' mode."""

import subprocess
import sys

import numpy as np
import pytest

from resblock.errors import GridError
from resblock.spec import secret
from resblock.spec.cases import Case

CASE = Case("functional", "offset", 2, 3, 5, 4, 0)


def test_the_same_seed_gives_the_same_inputs_and_another_seed_others():
    a = secret.derive_inputs(CASE, "00" * 16)
    b = secret.derive_inputs(CASE, "00" * 16)
    c = secret.derive_inputs(CASE, "01" + "00" * 15)
    assert np.array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])
    assert a[0].dtype == np.float32 and a[0].shape == (2, 3, 5, 4)


def test_inputs_follow_the_inputs_table():
    x, params, stats = secret.derive_inputs(CASE, "ab" * 16)
    # offset: N(0,1) + o_c with o_c ~ U(-64, 64): channel means far apart, spread ~1
    assert np.all(np.abs(x.std(axis=(0, 1, 2)) - 1) < 0.6)
    assert np.ptp(x.mean(axis=(0, 1, 2))) > 1.0
    assert params["Conv_0"]["kernel"].shape == (3, 3, 4, 4)
    s = params["BatchNorm_0"]["scale"]
    assert np.all((s >= 0.25) & (s <= 2.0))
    v = stats["BatchNorm_1"]["var"]
    assert np.all((v >= 0.5) & (v <= 2.0))
    zero = secret.derive_inputs(Case("stress", "zeroinit", 2, 6, 6, 4, 0), "ab" * 16)
    assert np.all(zero[1]["BatchNorm_1"]["scale"] == 0) and np.all(zero[0] >= 0)


def test_the_cotangent_has_the_output_shape():
    assert secret.derive_y_bar(CASE, "cd" * 16).shape == CASE.x_shape


def test_seeded_rows_become_functional_without_duplicates():
    cases = [Case("seeded", "normal", 1, 4, 4, 4, 0), Case("functional", "normal", 1, 4, 4, 4, 0),
             Case("stress", "large", 2, 6, 6, 4, 0)]
    got = secret.secret_cases(cases)
    assert [c.id for c in got] == ["functional-normal-n1-4x4-f4-s0", "stress-large-n2-6x6-f4-s0"]
    with pytest.raises(GridError, match="seeded case"):
        secret.derive_inputs(cases[0], "00")


@pytest.mark.parametrize("bad", ["", "0", "xyz0", "AB", "0" * 130])
def test_malformed_seeds_are_refused(bad):
    with pytest.raises(GridError, match="hexadecimal"):
        secret.check_seed(bad)


def test_fresh_seeds_are_16_random_bytes():
    a, b = secret.new_seed(), secret.new_seed()
    assert len(a) == 32 and a != b and secret.check_seed(a) == a


def test_importing_and_deriving_never_imports_jax():
    code = ("import sys; from resblock.spec import secret; from resblock.spec.cases import Case;"
            "secret.derive_inputs(Case('functional','normal',1,2,2,2,0), '00');"
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
