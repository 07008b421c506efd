"""The files of the ``resblock-program/1`` protocol: inputs written, outputs read.

Layout (normative text: ``spec/PROGRAM_PROTOCOL.md``): ``{input}/cases.json`` (schema
``program-io``), ``{input}/cases.txt`` and one directory per case of raw little-endian
float32 C-order files; ``{output}/DIR/`` receives ``y.bin`` and the four updated stats.
Pure Python and NumPy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resblock.errors import GridError, SpecError
from resblock.schemas import validate
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES

PROTOCOL = "resblock-program/1"
# The backward mode (spec section 10): y_bar in, the gradients out; the forward protocol
# is unchanged.
PROTOCOL_BACKWARD = "resblock-program-backward/1"
# The inference mode (spec section 12): the same inputs (the stats are the running
# statistics to normalise with), ``y`` alone out.
PROTOCOL_INFERENCE = "resblock-program-inference/1"

# Raw float32, little-endian whatever the host: the files are an interchange format.
_DTYPE = np.dtype("<f4")
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


class ProgramError(str):
    """A per-case failure message from an external program.

    A ``str`` subclass, so a result ``r`` of :func:`run_program` or :func:`read_outputs`
    is an error exactly when ``isinstance(r, str)``, and it prints as the message.
    """


def _file_name(name: str) -> str:
    """``Conv_0/kernel`` -> ``Conv_0.kernel.bin``."""
    return name.replace("/", ".") + ".bin"


def _array_shapes(n: int, h: int, w: int, c: int,
                  backward: bool = False, inference: bool = False) -> tuple[dict, dict]:
    """``{name: shape}`` of the inputs and the outputs of one case (C == F)."""
    f = c
    inputs = {"x": (n, h, w, c)}
    for name in PARAM_NAMES:
        inputs[name] = (3, 3, c, f) if name.endswith("/kernel") else (f,)
    for name in STAT_NAMES:
        inputs[name] = (f,)
    if backward:
        inputs["y_bar"] = (n, h, w, f)
        outputs = {"x_bar": (n, h, w, c)}
        outputs.update({f"{name}_bar": inputs[name] for name in PARAM_NAMES})
        return inputs, outputs
    outputs = {"y": (n, h, w, f)}
    if not inference:
        outputs.update({name: (f,) for name in STAT_NAMES})
    return inputs, outputs


def _case_dir(index: int, case_id: str) -> str:
    """A unique, shell- and whitespace-safe directory name that still shows the id."""
    safe = _SAFE_RE.sub("_", case_id).strip("._-")[:80]
    return f"{index:04d}-{safe}" if safe else f"{index:04d}"


def _leaf(tree: Mapping, name: str, what: str, case_id: str) -> np.ndarray:
    layer, leaf = name.split("/")
    try:
        return np.asarray(tree[layer][leaf])
    except (KeyError, TypeError, IndexError):
        raise SpecError(
            f"case {case_id!r}: {what} has no {layer}/{leaf}; expected Flax names "
            f"{', '.join(PARAM_NAMES if what == 'params' else STAT_NAMES)}"
        ) from None


def _case_arrays(case_id, x, params, batch_stats) -> tuple[tuple[int, ...], dict]:
    x = np.asarray(x)
    if x.ndim != 4:
        raise SpecError(f"case {case_id!r}: x must be 4-D NHWC, got shape {x.shape}")
    arrays = {"x": x}
    arrays.update({name: _leaf(params, name, "params", case_id) for name in PARAM_NAMES})
    arrays.update({name: _leaf(batch_stats, name, "batch_stats", case_id) for name in STAT_NAMES})
    n, h, w, c = x.shape
    features = arrays["Conv_0/kernel"].shape[-1] if arrays["Conv_0/kernel"].ndim else -1
    if c != features:
        raise SpecError(
            f"case {case_id!r}: x has C={c} channels but Conv_0/kernel has F={features} "
            "output features; the residual needs C == features"
        )
    expected, _ = _array_shapes(n, h, w, c)
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise SpecError(
                f"case {case_id!r}: {name} has shape {arrays[name].shape}, expected {shape}"
            )
    return (n, h, w, c), arrays


def write_inputs(directory, cases, backward: bool = False, inference: bool = False) -> dict:
    """Write one batch in the protocol's input layout and return its ``cases.json`` dict.

    Args:
      directory: the program's ``{input}``, normally empty; created if missing.
      cases: ``(case_id, x, params, batch_stats)`` tuples; ``x`` is NHWC, the trees are
        Flax-style nested dicts. Arrays are written as little-endian float32.
        With ``backward`` (protocol ``resblock-program-backward/1``), tuples of five:
        ``(case_id, x, params, batch_stats, y_bar)``. With ``inference`` (protocol
        ``resblock-program-inference/1``), ``batch_stats`` are the running statistics and
        ``y`` is the only output.

    Raises:
      GridError: no cases, an empty id, or duplicate ids.
      SpecError: a missing array, a wrong shape, or C != features.
    """
    directory = Path(directory)
    cases = list(cases)
    if not cases:
        raise GridError("no cases to hand to the program; a batch needs at least one case")
    directory.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    protocol = PROTOCOL_BACKWARD if backward else PROTOCOL_INFERENCE if inference else PROTOCOL
    entries, lines = [], [protocol]
    for index, (case_id, x, params, batch_stats, *rest) in enumerate(cases):
        case_id = str(case_id)
        if not case_id:
            raise GridError(f"case {index} has an empty id; every case needs a unique id")
        if case_id in seen:
            raise GridError(f"duplicate case id {case_id!r}: each case must appear once")
        seen.add(case_id)
        (n, h, w, c), arrays = _case_arrays(case_id, x, params, batch_stats)
        dir_name = _case_dir(index, case_id)
        case_path = directory / dir_name
        case_path.mkdir()
        in_shapes, out_shapes = _array_shapes(n, h, w, c, backward, inference)
        if backward:
            arrays["y_bar"] = np.asarray(rest[0])
            if arrays["y_bar"].shape != in_shapes["y_bar"]:
                raise SpecError(f"case {case_id!r}: y_bar has shape {arrays['y_bar'].shape}, "
                                f"expected {in_shapes['y_bar']}")
        for name, a in arrays.items():
            np.ascontiguousarray(a, dtype=_DTYPE).tofile(case_path / _file_name(name))
        entries.append(
            {
                "id": case_id,
                "dir": dir_name,
                "n": n,
                "h": h,
                "w": w,
                "c": c,
                "features": c,
                "inputs": _describe(in_shapes),
                "outputs": _describe(out_shapes),
            }
        )
        lines.append(f"{dir_name} {n} {h} {w} {c}")
    doc = {
        "protocol": protocol,
        "layout": "nhwc",
        "dtype": "float32",
        "byte_order": "little",
        "cases": entries,
    }
    validate(doc, "program-io", where="cases.json")
    (directory / "cases.json").write_text(_dumps(doc), "utf-8")
    (directory / "cases.txt").write_text("\n".join(lines) + "\n", "utf-8")
    return doc


def _describe(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    return {name: {"file": _file_name(name), "shape": list(s)} for name, s in shapes.items()}


def _dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


def read_outputs(directory, descriptor: Mapping) -> dict:
    """Read the program's outputs for every case of ``descriptor`` (a ``cases.json`` dict).

    Returns:
      ``{case_id: (y, new_batch_stats)}`` with float32 arrays and Flax-style nested
      stats, or ``{case_id: ProgramError}`` naming each missing or wrong-size file with
      the expected and the found byte size.
    """
    validate(descriptor, "program-io", where="the program-io descriptor")
    directory = Path(directory)
    results: dict = {}
    for case in descriptor["cases"]:
        case_dir = directory / case["dir"]
        problems, arrays = [], {}
        for name, spec in case["outputs"].items():
            shape = tuple(spec["shape"])
            rel = f"{case['dir']}/{spec['file']}"
            path = case_dir / spec["file"]
            want = _DTYPE.itemsize * math.prod(shape)
            what = f"{want} bytes (float32 little-endian, shape {shape})"
            if not path.is_file():
                found = "a directory" if path.is_dir() else "nothing"
                problems.append(f"output file {rel} is missing: expected {what}, found {found}")
                continue
            got = path.stat().st_size
            if got != want:
                problems.append(
                    f"output file {rel} has the wrong size: expected {what}, found {got} bytes"
                )
                continue
            arrays[name] = np.fromfile(path, dtype=_DTYPE).astype(np.float32).reshape(shape)
        if problems:
            results[case["id"]] = ProgramError("; ".join(problems))
            continue
        if descriptor["protocol"] == PROTOCOL_BACKWARD:
            grads: dict = {}
            for name in PARAM_NAMES:
                layer, leaf = name.split("/")
                grads.setdefault(layer, {})[leaf] = arrays[f"{name}_bar"]
            results[case["id"]] = (arrays["x_bar"], grads)
            continue
        if descriptor["protocol"] == PROTOCOL_INFERENCE:
            results[case["id"]] = (arrays["y"], None)
            continue
        stats: dict = {}
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            stats.setdefault(layer, {})[leaf] = arrays[name]
        results[case["id"]] = (arrays["y"], stats)
    return results
