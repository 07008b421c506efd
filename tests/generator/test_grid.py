"""Tests for generator/grid.py: presets, explicit axes, grouping, recorded definition."""

from __future__ import annotations

import pytest

from resblock.errors import GridError
from resblock.generator import grid
from resblock.spec.cases import Case


def test_smoke_preset_cases():
    ids = [c.id for c in grid.preset_cases("smoke")]
    assert ids == [
        "seeded-normal-n1-4x4-f4-s0",
        "seeded-normal-n1-3x5-f2-s0",
        "functional-normal-n2-4x4-f4-s0",
        "stress-offset-n2-3x3-f2-s0",
        "stress-normal-n1-1x1-f4-s0",
    ]


def test_resnet18_preset_is_the_four_stages_at_a_training_batch():
    from resblock.generator import resources

    cases = grid.preset_cases("resnet18")
    assert [c.id for c in cases] == [
        "functional-normal-n32-56x56-f64-s0",
        "functional-normal-n32-28x28-f128-s0",
        "functional-normal-n32-14x14-f256-s0",
        "functional-normal-n32-7x7-f512-s0",
    ]
    assert len(grid.group_cases(cases)) == 4  # one shape group per stage
    # each stage halves the activation: a quarter of the area, twice the channels
    assert [c.n * c.h * c.w * c.features for c in cases] == [32 * 56 * 56 * 64 // 2**i
                                                              for i in range(4)]
    # the generator's estimate of the largest group's working set: about 5.1 GB (4.1 GB
    # before format 6 added the storage budgets and spreads)
    resources.check_memory(cases, 5.5)
    with pytest.raises(GridError, match="functional|n32_h"):
        resources.check_memory(cases, 4.5)


def test_default_preset_covers_every_axis_value():
    cases = grid.preset_cases("default")
    assert len(cases) == sum(len(r.seeds) for r in grid.DEFAULT_ROWS)
    assert {c.family for c in cases} == {"seeded", "functional", "stress"}
    assert {c.inputs for c in cases} == {"normal", "lowamp", "large", "offset", "zeroinit",
                                         "deadchan"}
    assert {c.n for c in cases} == {1, 2, 4, 8}
    assert Case("seeded", "normal", 1, 4, 4, 4, 0) in cases  # the worked example
    assert any(c.h != c.w for c in cases)
    assert {c.n * c.h * c.w for c in cases} >= {1, 2, 4, 8, 16}
    assert all(r.why for r in grid.DEFAULT_ROWS)


def test_unknown_preset():
    with pytest.raises(GridError, match="unknown preset 'tiny'; expected one of default, smoke"):
        grid.preset_cases("tiny")


def test_axes_product_drops_seeded_batches_above_one():
    cases = grid.axes_cases(families=("seeded", "functional"), inputs=("normal",),
                            batches=(1, 2), shapes=((2, 2), (3, 5)), features=(2,),
                            seeds=(0, 1))
    ids = [c.id for c in cases]
    assert len(ids) == 2 * 2 + 2 * 2 * 2
    assert not any(c.family == "seeded" and c.n != 1 for c in cases)
    assert ids[0] == "seeded-normal-n1-2x2-f2-s0"
    assert "functional-normal-n2-3x5-f2-s1" in ids


def test_axes_accept_matching_hwc_shapes():
    cases = grid.axes_cases(families=("seeded",), inputs=("normal",), batches=(1,),
                            shapes=((4, 4, 4),), features=(4,), seeds=(0,))
    assert [c.id for c in cases] == ["seeded-normal-n1-4x4-f4-s0"]


def test_axes_refuse_c_not_equal_features():
    with pytest.raises(GridError, match="C=3 but features=4"):
        grid.axes_cases(families=("seeded",), inputs=("normal",), batches=(1,),
                        shapes=((4, 4, 3),), features=(4,), seeds=(0,))


def test_axes_refuse_an_empty_grid():
    with pytest.raises(GridError, match="the grid is empty.*--batch 1"):
        grid.axes_cases(families=("seeded",), inputs=("normal",), batches=(4,),
                        shapes=((4, 4),), features=(4,), seeds=(0,))


def test_axes_refuse_duplicates():
    with pytest.raises(GridError, match="duplicate case id"):
        grid.axes_cases(families=("seeded",), inputs=("normal",), batches=(1,),
                        shapes=((4, 4), (4, 4)), features=(4,), seeds=(0,))


def test_group_cases_is_deterministic_and_by_shape():
    cases = grid.preset_cases("smoke") + [Case("seeded", "normal", 1, 4, 4, 4, 1),
                                          Case("functional", "normal", 1, 4, 4, 4, 0)]
    groups = grid.group_cases(cases)
    assert groups == grid.group_cases(list(reversed(cases)))
    names = [g[0].group for g in groups]
    assert names == sorted(names)
    for g in groups:
        assert len({c.group for c in g}) == 1
        assert g == sorted(g)
    assert sum(len(g) for g in groups) == len(cases)
    big = next(g for g in groups if g[0].group == "n1_h4_w4_f4")
    assert [c.id for c in big] == ["functional-normal-n1-4x4-f4-s0",
                                   "seeded-normal-n1-4x4-f4-s0", "seeded-normal-n1-4x4-f4-s1"]


def test_definition_records_rows_or_ids():
    d = grid.definition("smoke", grid.preset_cases("smoke"))
    assert len(d["rows"]) == len(grid.SMOKE_ROWS)
    assert d["rows"][0] == {"family": "seeded", "inputs": "normal", "n": 1, "shape": [4, 4],
                            "features": 4, "seeds": [0], "why": "worked example"}
    cases = [Case("seeded", "normal", 1, 2, 2, 2, 3)]
    assert grid.definition(None, cases) == {"cases": ["seeded-normal-n1-2x2-f2-s3"]}


def test_presets_have_no_duplicate_ids():
    for name in grid.PRESETS:
        cases = grid.preset_cases(name)
        assert len(cases) == len({c.id for c in cases})
