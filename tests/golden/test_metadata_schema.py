"""Tests for schemas/golden-metadata.schema.json (via resblock.schemas): valid metadata of
a generated file passes; each kind of breakage is reported and refused."""

from __future__ import annotations

import copy

import pytest

from resblock.errors import GoldenFormatError, SchemaError
from resblock.schemas import SCHEMA_NAMES, errors, load_schema, validate


def _broken(meta, how):
    m = copy.deepcopy(meta)
    how(m)
    return m


BREAKAGES = {
    "unknown top-level field": (lambda m: m.__setitem__("note", "x"), "(root)"),
    "unknown case field": (lambda m: m["cases"][0].__setitem__("extra", 1), "at cases/0"),
    "bad content sha": (lambda m: m.__setitem__("content_sha256", "abc"), "content_sha256"),
    "uppercase case sha": (lambda m: m["cases"][1].__setitem__(
        "sha256", m["cases"][1]["sha256"].upper()), "cases/1/sha256"),
    "missing key": (lambda m: m.pop("created"), "'created' is a required property"),
    "missing case key": (lambda m: m["cases"][0].pop("kappa"), "'kappa' is a required"),
    "wrong type": (lambda m: m["cases"][0].__setitem__("n", "1"), "cases/0/n"),
    "kappa below 1": (lambda m: m["cases"][0].__setitem__("kappa", 0.5), "cases/0/kappa"),
    "bad created": (lambda m: m.__setitem__("created", "yesterday"), "at created"),
    "bad family": (lambda m: m["cases"][0].__setitem__("family", "tiny"), "cases/0/family"),
    "bad version": (lambda m: m.__setitem__("format_version", "1.0"), "format_version"),
    "bad derivation device": (lambda m: m["computation"].__setitem__(
        "derivation_device", "gpu"), "computation/derivation_device"),
    "bad group name": (lambda m: m["groups"][0].__setitem__("name", "g0"), "groups/0/name"),
}


def test_generated_metadata_is_valid(smoke_golden):
    _, meta = smoke_golden
    assert errors(meta, "golden-metadata") == []
    validate(meta, "golden-metadata")


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_breakage_is_reported_and_refused(smoke_golden, name):
    _, meta = smoke_golden
    how, where = BREAKAGES[name]
    bad = _broken(meta, how)
    found = errors(bad, "golden-metadata")
    assert found, name
    assert any(where in line for line in found), found
    with pytest.raises(SchemaError, match="my.h5 does not validate against schema "
                                          "'golden-metadata'") as e:
        validate(bad, "golden-metadata", where="my.h5")
    assert isinstance(e.value, GoldenFormatError)


def test_many_errors_are_summarised(smoke_golden):
    _, meta = smoke_golden
    bad = _broken(meta, lambda m: [m.pop(k) for k in ("created", "grid", "groups", "cases")])
    assert len(errors(bad, "golden-metadata")) == 4
    with pytest.raises(SchemaError, match=r"\(and 1 more\)"):
        validate(bad, "golden-metadata")


def test_every_schema_loads_and_has_its_id():
    for name in SCHEMA_NAMES:
        assert load_schema(name)["$id"] == f"urn:resblock:schema:{name}"
    with pytest.raises(KeyError, match="unknown schema 'golden'"):
        load_schema("golden")
