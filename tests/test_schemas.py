"""schemas/: every schema is valid against its meta-schema, and $refs resolve."""

from __future__ import annotations

import jsonschema
import pytest

from resblock.schemas import SCHEMA_NAMES, errors, load_schema
from resblock.spec.constants import load


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid(name):
    schema = load_schema(name)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["$id"] == f"urn:resblock:schema:{name}"


def test_spec_constants_validate():
    assert errors(load(), "spec-constants") == []


def test_unknown_schema_name():
    with pytest.raises(KeyError, match="unknown schema"):
        load_schema("nope")
