"""Tests of the files of the ``resblock-program/1`` protocol (conformance/running/program_files.py,
spec/PROGRAM_PROTOCOL.md): the input folder a program reads (cases.json validated by the
program-io schema, cases.txt, raw little-endian float32 files, case folders safe for any
id) and the outputs read back, with every missing or wrong-size file named. The runs of
real programs are in test_program.py; both use conftest.py's ``program_cases``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from resblock.conformance.running.program import PROTOCOL, ProgramError, read_outputs, write_inputs
from resblock.errors import GridError, SchemaError, SpecError
from resblock.schemas import errors as schema_errors
from resblock.spec.constants import STAT_NAMES


def test_write_inputs_layout(tmp_path, program_cases):
    doc = write_inputs(tmp_path, program_cases[:3])
    assert schema_errors(doc, "program-io") == []
    assert json.loads((tmp_path / "cases.json").read_text("utf-8")) == doc
    lines = (tmp_path / "cases.txt").read_text("utf-8").splitlines()
    assert lines[0] == PROTOCOL
    assert len(lines) == 4
    for line, entry, (case_id, x, params, stats) in zip(
        lines[1:], doc["cases"], program_cases[:3], strict=True
    ):
        assert entry["id"] == case_id
        n, h, w, c = x.shape
        assert line == f"{entry['dir']} {n} {h} {w} {c}"
        assert (entry["n"], entry["h"], entry["w"], entry["c"], entry["features"]) == (
            n,
            h,
            w,
            c,
            c,
        )
        d = tmp_path / entry["dir"]
        assert sorted(p.name for p in d.iterdir()) == sorted(
            s["file"] for s in entry["inputs"].values()
        )
        assert (d / "x.bin").read_bytes() == x.astype("<f4").tobytes()  # little-endian, C order
        kernel = np.fromfile(d / "Conv_1.kernel.bin", "<f4").reshape(3, 3, c, c)
        np.testing.assert_array_equal(kernel, params["Conv_1"]["kernel"])
        var = np.fromfile(d / "BatchNorm_0.var.bin", "<f4")
        np.testing.assert_array_equal(var, stats["BatchNorm_0"]["var"])
        assert entry["inputs"]["Conv_0/kernel"] == {
            "file": "Conv_0.kernel.bin",
            "shape": [3, 3, c, c],
        }
        assert entry["outputs"]["y"] == {"file": "y.bin", "shape": [n, h, w, c]}


def test_case_dirs_are_safe_for_any_id(tmp_path, program_cases):
    _, x, params, stats = program_cases[0]
    doc = write_inputs(tmp_path, [("a b/../c", x, params, stats), ("??", x, params, stats)])
    dirs = [e["dir"] for e in doc["cases"]]
    assert dirs == ["0000-a_b_.._c", "0001"]
    line = (tmp_path / "cases.txt").read_text("utf-8").splitlines()[1]
    assert len(line.split()) == 5


@pytest.mark.parametrize(
    "breakage",
    [
        "extra top-level key",
        "extra case key",
        "extra array key",
        "wrong protocol",
        "missing output",
        "dir with a slash",
        "zero batch",
        "no cases",
    ],
)
def test_schema_rejects_broken_descriptors(tmp_path, program_cases, breakage):
    doc = write_inputs(tmp_path, program_cases[:1])
    case = doc["cases"][0]
    if breakage == "extra top-level key":
        doc["comment"] = "x"
    elif breakage == "extra case key":
        case["stride"] = 1
    elif breakage == "extra array key":
        case["inputs"]["x"]["dtype"] = "float32"
    elif breakage == "wrong protocol":
        doc["protocol"] = "resblock-program/2"
    elif breakage == "missing output":
        del case["outputs"]["BatchNorm_1/var"]
    elif breakage == "dir with a slash":
        case["dir"] = "../escape"
    elif breakage == "zero batch":
        case["n"] = 0
    elif breakage == "no cases":
        doc["cases"] = []
    assert schema_errors(doc, "program-io") != []
    with pytest.raises(SchemaError, match="program-io"):
        read_outputs(tmp_path, doc)


def test_write_inputs_refuses_bad_cases(tmp_path, program_cases):
    case_id, x, params, stats = program_cases[2]  # features 4
    with pytest.raises(GridError, match="duplicate case id"):
        write_inputs(tmp_path / "a", [program_cases[0], program_cases[0]])
    with pytest.raises(GridError, match="empty id"):
        write_inputs(tmp_path / "b", [("", x, params, stats)])
    with pytest.raises(GridError, match="at least one case"):
        write_inputs(tmp_path, [])
    with pytest.raises(SpecError, match="C == features"):
        write_inputs(tmp_path, [(case_id, x[..., :2], params, stats)])
    broken = {k: dict(v) for k, v in params.items()}
    del broken["BatchNorm_1"]["scale"]
    with pytest.raises(SpecError, match="BatchNorm_1/scale"):
        write_inputs(tmp_path, [(case_id, x, broken, stats)])


def test_read_outputs_names_missing_and_wrong_size_files(tmp_path, program_cases):
    doc = write_inputs(tmp_path / "in", program_cases[3:4])  # n2 3x5 f4: y is 480 bytes
    entry = doc["cases"][0]
    out = tmp_path / "out" / entry["dir"]
    out.mkdir(parents=True)
    (out / "y.bin").write_bytes(b"\0" * 100)
    for name in STAT_NAMES[:3]:
        (out / (name.replace("/", ".") + ".bin")).write_bytes(b"\0" * 16)
    msg = read_outputs(tmp_path / "out", doc)[entry["id"]]
    assert isinstance(msg, ProgramError)
    assert f"{entry['dir']}/y.bin has the wrong size: expected 480 bytes" in msg
    assert "found 100 bytes" in msg
    assert f"{entry['dir']}/BatchNorm_1.var.bin is missing: expected 16 bytes" in msg


