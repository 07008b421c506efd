"""Machine-readable spec constants (``spec/constants.json``), loaded once.

The JSON file is normative; it is validated against ``schemas/spec-constants.schema.json``
when loaded. Module-level names below are conveniences read from it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.lru_cache(maxsize=1)
def load() -> dict:
    """The spec constants as a dict, schema-validated."""
    text = resources.files("resblock.spec").joinpath("constants.json").read_text("utf-8")
    data = json.loads(text)
    from resblock.schemas import validate

    validate(data, "spec-constants", where="spec/constants.json")
    return data


_C = load()
SPEC_VERSION: str = _C["spec_version"]
FORMAT_VERSION: str = _C["format_version"]
EPSILON: float = _C["batch_norm"]["epsilon"]
MOMENTUM: float = _C["batch_norm"]["momentum"]
UNIT_ROUNDOFF: float = _C["tolerance"]["unit_roundoff"]
STAGES: tuple[str, ...] = tuple(_C["block"]["stages"])
PARAM_NAMES: tuple[str, ...] = (
    "Conv_0/kernel",
    "Conv_0/bias",
    "BatchNorm_0/scale",
    "BatchNorm_0/bias",
    "Conv_1/kernel",
    "Conv_1/bias",
    "BatchNorm_1/scale",
    "BatchNorm_1/bias",
)
STAT_NAMES: tuple[str, ...] = (
    "BatchNorm_0/mean",
    "BatchNorm_0/var",
    "BatchNorm_1/mean",
    "BatchNorm_1/var",
)
