"""Tests for generator/cli.py's parameter types (the command itself: tests/test_cli.py)."""

from __future__ import annotations

import click
import pytest

from resblock.generator.cli import IntList, PositiveGB, Shapes


@pytest.mark.parametrize("text, want", [
    ("0", (0,)),
    ("0-4,7", (0, 1, 2, 3, 4, 7)),
    (" 3 , 1-2 ", (3, 1, 2)),
    ("2,2,1-3", (2, 1, 3)),  # duplicates dropped, first order kept
])
def test_int_list_parses(text, want):
    assert IntList(0).convert(text, None, None) == want


@pytest.mark.parametrize("text, match", [
    ("a-b", "'a-b' is not an integer or a range"),
    ("5-2", "'5-2': values must be >= 0 and ranges ascending"),
    ("-1", "values must be >= 0"),
    ("1,,2", "is not an integer"),
    ("1.5", "is not an integer"),
])
def test_int_list_refuses(text, match):
    with pytest.raises(click.BadParameter, match=match):
        IntList(0).convert(text, None, None)


def test_int_list_minimum():
    with pytest.raises(click.BadParameter, match="values must be >= 1"):
        IntList(1).convert("0-2", None, None)


@pytest.mark.parametrize("text, want", [
    ("4x4", ((4, 4),)),
    ("7x13, 1x1", ((7, 13), (1, 1))),
    ("4x4x8", ((4, 4, 8),)),
])
def test_shapes_parse(text, want):
    assert Shapes().convert(text, None, None) == want


@pytest.mark.parametrize("text, match", [
    ("-1x4", "sizes must be positive"),
    ("0x4", "sizes must be positive"),
    ("4x4x0", "sizes must be positive"),
    ("4", "is not a shape like 4x4"),
    ("4x", "is not a shape like 4x4"),
    ("4*4", "is not a shape like 4x4"),
    ("4x4x4x4", "is not a shape like 4x4"),
])
def test_shapes_refuse(text, match):
    with pytest.raises(click.BadParameter, match=match):
        Shapes().convert(text, None, None)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-2", "lots"])
def test_memory_limit_must_be_a_finite_positive_number(value):
    from click.testing import CliRunner

    from resblock.cli import cli

    r = CliRunner().invoke(cli, ["generate", "-o", "x.h5", "--preset", "smoke",
                                 "--memory-limit", value])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--memory-limit'" in r.output and "Traceback" not in r.output


def test_memory_limit_accepts_a_finite_number():
    assert PositiveGB().convert("1.5", None, None) == 1.5


def test_every_input_kind_of_the_spec_can_be_generated(tmp_path):
    """--inputs takes every kind of the INPUTS table (zeroinit and deadchan were refused:
    the ReLU-at-zero cases could not be generated at a user's own sizes)."""
    from click.testing import CliRunner

    from resblock.cli import cli
    from resblock.golden.reader import GoldenFile
    from resblock.spec.cases import INPUTS

    out = tmp_path / "g.h5"
    res = CliRunner().invoke(cli, ["generate", "--family", "seeded,functional", "--inputs",
                                   ",".join(INPUTS), "--shapes", "2x3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    with GoldenFile(out) as gf:
        assert {(e["family"], e["inputs"]) for e in gf.entries} == {
            (f, i) for f in ("seeded", "functional") for i in INPUTS}
        case = next(c for c in gf.iter_cases() if c.case.inputs == "zeroinit")
        assert not case.arrays["params/BatchNorm_1/scale"].any()
        assert (case.arrays["x"] >= 0).all()
