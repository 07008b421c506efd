"""Tests for spec/cases.py: the Case record, its id, from_id and unique."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.errors import GridError, HarnessError
from resblock.generator.grid import PRESETS, preset_cases
from resblock.spec.cases import FAMILIES, INPUTS, Case, unique


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_id_round_trips_for_every_preset_case(preset):
    cases = preset_cases(preset)
    assert cases
    for c in cases:
        back = Case.from_id(c.id)
        assert back == c
        assert back.id == c.id
    assert len({c.id for c in cases}) == len(cases)


def test_id_format_of_the_worked_example():
    c = Case("seeded", "normal", 1, 4, 4, 4, 0)
    assert c.id == "seeded-normal-n1-4x4-f4-s0"
    assert c.group == "n1_h4_w4_f4"
    assert c.x_shape == (1, 4, 4, 4)
    assert c.params_source == "init"
    assert Case("stress", "offset", 2, 3, 5, 8, 11).id == "stress-offset-n2-3x5-f8-s11"
    assert Case("functional", "normal", 2, 3, 5, 8, 11).params_source == "random"


def test_h_and_w_are_not_interchangeable():
    a, b = Case("functional", "normal", 1, 3, 5, 2, 0), Case("functional", "normal", 1, 5, 3, 2, 0)
    assert a.id != b.id and a.group != b.group and a.x_shape != b.x_shape


def test_to_dict_has_exactly_the_fields():
    c = Case("stress", "lowamp", 4, 2, 7, 3, 9)
    assert c.to_dict() == {"family": "stress", "inputs": "lowamp", "n": 4, "h": 2, "w": 7,
                           "features": 3, "seed": 9}
    assert Case(**c.to_dict()) == c


def test_derivation_string_is_the_normative_template():
    from resblock.spec.constants import load

    c = Case("functional", "large", 2, 3, 5, 8, 7)
    template = load()["derivation"]["derivation_string"]
    want = template.format(family="functional", inputs="large", n=2, h=3, w=5, features=8,
                           seed=7, role="params/Conv_0/kernel")
    assert c.derivation_string("params/Conv_0/kernel") == want
    assert want == "resblock/1|functional|large|n=2|h=3|w=5|f=8|seed=7|params/Conv_0/kernel"


def test_unique_refuses_duplicates():
    a = Case("seeded", "normal", 1, 4, 4, 4, 0)
    b = Case("seeded", "normal", 1, 4, 4, 4, 1)
    assert unique([a, b]) == [a, b]
    assert unique(iter([b, a])) == [b, a]
    with pytest.raises(GridError, match="duplicate case id 'seeded-normal-n1-4x4-f4-s0'"):
        unique([a, b, Case.from_id(a.id)])


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(n=0), "n must be a positive integer"),
        (dict(h=0), "h must be a positive integer"),
        (dict(w=-3), "w must be a positive integer"),
        (dict(features=0), "features must be a positive integer"),
        (dict(n=2.0), "n must be a positive integer"),
        (dict(family="resnet"), "unknown family 'resnet'"),
        (dict(inputs="uniform"), "unknown inputs 'uniform'"),
        (dict(family="seeded", n=2), "seeded cases have batch 1"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(seed=2**31), "seed must be an integer"),
    ],
)
def test_invalid_fields_raise_grid_error(fields, match):
    base = dict(family="functional", inputs="normal", n=1, h=4, w=4, features=4, seed=0)
    with pytest.raises(GridError, match=match):
        Case(**{**base, **fields})


def test_grid_error_is_a_harness_error():
    assert issubclass(GridError, HarnessError)


@pytest.mark.parametrize("bad", [
    "seeded-normal-n1-4x4-f4",  # no seed
    "seeded-normal-n1-4x4x4-f4-s0",
    "Seeded-normal-n1-4x4-f4-s0",
    "seeded_normal_n1_4x4_f4_s0",
    "seeded-normal-n1-4x4-f4-s0 ",
    "",
])
def test_from_id_refuses_malformed_ids(bad):
    with pytest.raises(GridError, match="malformed case id"):
        Case.from_id(bad)


@pytest.mark.parametrize("bad, match", [
    ("seeded-normal-n2-4x4-f4-s0", "batch 1"),
    ("seeded-gaussian-n1-4x4-f4-s0", "unknown inputs"),
    ("tiny-normal-n1-4x4-f4-s0", "unknown family"),
    ("functional-normal-n0-4x4-f4-s0", "n must be"),
])
def test_from_id_validates_the_fields(bad, match):
    with pytest.raises(GridError, match=match):
        Case.from_id(bad)


def test_tables_name_the_families_and_inputs():
    assert set(FAMILIES) == {"seeded", "functional", "stress"}
    assert set(INPUTS) == {"normal", "lowamp", "large", "offset", "zeroinit", "deadchan"}
    assert all(row["purpose"] for row in (*FAMILIES.values(), *INPUTS.values()))


def test_cases_are_frozen_and_ordered():
    c = Case("seeded", "normal", 1, 4, 4, 4, 0)
    with pytest.raises(AttributeError):
        c.n = 2
    assert sorted([Case("seeded", "normal", 1, 4, 4, 4, 1), c]) == [
        c, Case("seeded", "normal", 1, 4, 4, 4, 1)]


@pytest.mark.parametrize("alias", ["seeded-normal-n01-4x4-f4-s0", "seeded-normal-n1-4x4-f4-s007"])
def test_from_id_refuses_non_canonical_ids(alias):
    """An id names one case and a case has one id: from_id(s).id == s or GridError.

    Otherwise two index entries ("...-n1-..." and "...-n01-...") can name the same case
    without the duplicate check noticing, and `resblock show` cannot find the alias.
    """
    with pytest.raises(GridError):
        Case.from_id(alias)


@pytest.mark.parametrize("name", ["n", "seed"])
def test_bool_fields_are_refused(name):
    """bool is an int subclass; Case(n=True) would get the id '...-nTrue-...'."""
    base = dict(family="functional", inputs="normal", n=1, h=4, w=4, features=4, seed=0)
    with pytest.raises(GridError):
        Case(**{**base, name: True})


def test_zero_init_and_dead_channel_kinds_zero_a_batch_norm():
    from resblock.spec.derivation import derive_variables, derive_x

    zc = Case("stress", "zeroinit", 2, 3, 3, 4, 0)
    x = derive_x(zc)
    params, _ = derive_variables(zc)
    assert np.all(x >= 0) and np.any(x == 0)
    assert np.all(params["BatchNorm_1"]["scale"] == 0)
    assert np.all(params["BatchNorm_1"]["bias"] == 0)
    assert np.all(params["BatchNorm_0"]["scale"] != 0)
    dc = Case("stress", "deadchan", 2, 3, 3, 4, 0)
    params, _ = derive_variables(dc)
    assert params["BatchNorm_0"]["scale"][0] == 0 == params["BatchNorm_0"]["bias"][0]
    assert np.all(params["BatchNorm_0"]["scale"][1:] != 0)
    # the batched derivation (resblock generate) agrees bit for bit
    from resblock.generator.batched import derive_cases

    (bx, bparams, _), = derive_cases([dc])
    for layer, leaves in params.items():
        for leaf, v in leaves.items():
            assert np.array_equal(bparams[layer][leaf], v), (layer, leaf)
