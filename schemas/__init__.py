"""JSON Schemas for everything the kit writes or reads, and one validator.

Schemas live beside this file as ``NAME.schema.json`` with ``$id``
``urn:resblock:schema:NAME`` and compose with ``$ref`` (as TOSA's verif schemas do).
They reject unknown fields: a typo in a document is an error, not silently ignored.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from resblock.errors import SchemaError

SCHEMA_NAMES = (
    "spec-constants",
    "golden-metadata",
    "golden-manifest",
    "check-report",
    "program-io",
    "coverage",
)


@functools.cache
def load_schema(name: str) -> dict:
    """The schema document ``name`` (without the ``.schema.json`` suffix)."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    path = resources.files("resblock.schemas").joinpath(f"{name}.schema.json")
    return json.loads(path.read_text("utf-8"))


@functools.cache
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    resources_ = [
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in SCHEMA_NAMES
    ]
    registry = Registry().with_resources(resources_)
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    # The schemas themselves are checked against their meta-schema by the tests
    # (tests/test_schemas.py), not on every run: that check costs ~0.1 s per process.
    return cls(schema, registry=registry)


def errors(data, name: str) -> list[str]:
    """All validation errors of ``data`` against schema ``name``, as readable lines."""
    out = []
    for e in sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        out.append(f"at {where}: {e.message}")
    return out


def validate(data, name: str, where: str = "document") -> None:
    """Raise :class:`SchemaError` naming ``where`` and the first problems found."""
    found = errors(data, name)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise SchemaError(
            f"{where} does not validate against schema {name!r}: "
            + "; ".join(found[:3]) + more
        )
