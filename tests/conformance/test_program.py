"""Tests of conformance/program.py, the ``resblock-program/1`` runner (spec/PROGRAM_PROTOCOL.md).

The C example (examples/c_program/resblock_block.c) is built with the system C compiler
and compared with the Flax reference ``resblock.spec.reference.apply_block`` on derived
non-init variables; a small Python program that reads ``cases.json`` checks the JSON
side of the protocol without a compiler. The error paths (non-zero exit, timeout,
signal, wrong-size and missing outputs, bad ``--exec`` templates) use tiny programs
written to ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from resblock.conformance.program import (
    PROTOCOL,
    ProgramError,
    parse_exec,
    read_outputs,
    run_program,
    write_inputs,
)
from resblock.errors import GridError, SchemaError, SpecError, TargetError
from resblock.schemas import errors as schema_errors
from resblock.spec.cases import Case
from resblock.spec.constants import STAT_NAMES

REPO = Path(__file__).resolve().parents[2]
C_SOURCE = REPO / "examples" / "c_program" / "resblock_block.c"
OUT_TOL = 1e-4  # max abs error on y for N(0, 1) inputs
STATS_TOL = 1e-5  # max abs error on the running mean/var

# (n, h, w, features, seed): batch 1 and 2; 1x1, 3x5, 4x4; features 1, 2, 4.
SHAPES = [
    (1, 1, 1, 1, 0),  # one value per channel: batch variance 0
    (2, 1, 1, 2, 0),  # only the kernel's centre tap is used
    (1, 3, 5, 4, 0),
    (2, 3, 5, 4, 0),
    (2, 3, 5, 4, 1),  # same shape group as the previous case
    (1, 4, 4, 2, 0),
    (2, 4, 4, 1, 0),
]


def _case(n, h, w, f, seed):
    from resblock.spec.derivation import derive_random_variables, derive_x

    case = Case(family="functional", inputs="normal", n=n, h=h, w=w, features=f, seed=seed)
    params, stats = derive_random_variables(case)
    return case.id, derive_x(case), params, stats


@pytest.fixture(scope="module")
def cases():
    return [_case(*s) for s in SHAPES]


@pytest.fixture(scope="module")
def expected(cases):
    from resblock.spec.reference import apply_block

    out = {}
    for case_id, x, params, stats in cases:
        y, new_stats = apply_block(x, params, stats)
        out[case_id] = (np.asarray(y), _np_tree(new_stats))
    return out


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    """The C example, built with ``cc -O2 -std=c99`` (skips without a C compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH")
    exe = tmp_path_factory.mktemp("c program") / "resblock_block"  # a space in the path
    cmd = [compiler, "-O2", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-o", str(exe)]
    build = subprocess.run([*cmd, str(C_SOURCE), "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert build.stderr == "", f"the C example should compile without warnings:\n{build.stderr}"
    return exe


def _np_tree(tree):
    return {k: _np_tree(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


def _template(exe) -> str:
    return f"{shlex.quote(str(exe))} {{input}} {{output}}"


def _assert_matches(result, expected):
    assert set(result) == set(expected)
    for case_id, (y_ref, stats_ref) in expected.items():
        got = result[case_id]
        assert not isinstance(got, str), f"{case_id}: {got}"
        y, stats = got
        assert y.dtype == np.float32 and y.shape == y_ref.shape, case_id
        assert np.abs(y - y_ref).max() <= OUT_TOL, case_id
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            a, b = stats[layer][leaf], stats_ref[layer][leaf]
            assert a.dtype == np.float32 and a.shape == b.shape, (case_id, name)
            assert np.abs(a - b).max() <= STATS_TOL, (case_id, name)


def _program(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script in ``tmp_path`` (argv[1] = input, argv[2] = output)."""
    path = tmp_path / name
    head = f"#!{sys.executable}\nimport os, sys, signal, time, json\n"
    head += "inp, out = sys.argv[1], sys.argv[2]\n"
    path.write_text(head + textwrap.dedent(body), "utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --------------------------------------------------------------------------- layout


def test_write_inputs_layout(tmp_path, cases):
    doc = write_inputs(tmp_path, cases[:3])
    assert schema_errors(doc, "program-io") == []
    assert json.loads((tmp_path / "cases.json").read_text("utf-8")) == doc
    lines = (tmp_path / "cases.txt").read_text("utf-8").splitlines()
    assert lines[0] == PROTOCOL
    assert len(lines) == 4
    for line, entry, (case_id, x, params, stats) in zip(
        lines[1:], doc["cases"], cases[:3], strict=True
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


def test_case_dirs_are_safe_for_any_id(tmp_path, cases):
    _, x, params, stats = cases[0]
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
def test_schema_rejects_broken_descriptors(tmp_path, cases, breakage):
    doc = write_inputs(tmp_path, cases[:1])
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


def test_write_inputs_refuses_bad_cases(tmp_path, cases):
    case_id, x, params, stats = cases[2]  # features 4
    with pytest.raises(GridError, match="duplicate case id"):
        write_inputs(tmp_path / "a", [cases[0], cases[0]])
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


def test_read_outputs_names_missing_and_wrong_size_files(tmp_path, cases):
    doc = write_inputs(tmp_path / "in", cases[3:4])  # n2 3x5 f4: y has 2*3*5*4*4 = 480 bytes
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


# --------------------------------------------------------------------------- success


def test_c_example_matches_reference(c_program, cases, expected, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_program(_template(c_program), cases, timeout=60, workdir=work)
    assert result.returncode == 0, result.stderr
    _assert_matches(result, expected)
    assert list(work.iterdir()) == [], "the temporary directory must be removed"


def test_c_example_one_shape_group_per_run(c_program, cases, expected):
    """How the runner calls it: one batch per shape group, the argv given as a list."""
    groups: dict = {}
    for case in cases:
        groups.setdefault(case[1].shape, []).append(case)
    assert any(len(g) == 2 for g in groups.values())
    for group in groups.values():
        result = run_program([str(c_program), "{input}", "{output}"], group, timeout=60)
        _assert_matches(result, {c[0]: expected[c[0]] for c in group})


def test_c_example_reports_io_errors(c_program, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cases.txt").write_text("resblock-program/9\n", "utf-8")
    proc = subprocess.run(
        [str(c_program), str(tmp_path / "in"), str(tmp_path)], text=True, capture_output=True
    )
    assert proc.returncode == 1
    assert "unsupported protocol 'resblock-program/9'" in proc.stderr
    proc = subprocess.run([str(c_program)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_c_example_reports_short_input_file(c_program, cases, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    doc = write_inputs(inp, cases[3:4])
    d = doc["cases"][0]["dir"]
    (inp / d / "Conv_1.bias.bin").write_bytes(b"\0" * 12)  # 3 of 4 values
    (tmp_path / "out" / d).mkdir(parents=True)
    proc = subprocess.run(
        [str(c_program), str(inp), str(tmp_path / "out")], text=True, capture_output=True
    )
    assert proc.returncode == 1
    assert "Conv_1.bias.bin is too short: expected 16 bytes" in proc.stderr
    assert "found 12" in proc.stderr


def test_json_program_matches_reference(tmp_path, cases, expected):
    """A program that reads cases.json (shapes included) instead of cases.txt."""
    exe = _program(
        tmp_path,
        "json_block.py",
        """
        import numpy as np
        from resblock.conformance.variants import Variant, make_forward

        forward = make_forward(Variant())  # the correct NumPy block

        def tree(arrays, names):
            t = {}
            for name in names:
                layer, leaf = name.split("/")
                t.setdefault(layer, {})[leaf] = arrays[name]
            return t

        doc = json.load(open(os.path.join(inp, "cases.json")))
        assert doc["protocol"] == "resblock-program/1"
        for case in doc["cases"]:
            a = {
                name: np.fromfile(os.path.join(inp, case["dir"], spec["file"]), "<f4")
                .reshape(spec["shape"])
                for name, spec in case["inputs"].items()
            }
            is_stat = [k.endswith(("/mean", "/var")) for k in a]
            params = tree(a, [k for k, s in zip(a, is_stat) if k != "x" and not s])
            stats = tree(a, [k for k, s in zip(a, is_stat) if s])
            y, new = forward(a["x"], params, stats)
            outs = {"y": y}
            outs.update({f"{l}/{k}": v for l, d in new.items() for k, v in d.items()})
            for name, spec in case["outputs"].items():
                path = os.path.join(out, case["dir"], spec["file"])
                np.asarray(outs[name], "<f4").tofile(path)
        """,
    )
    result = run_program(_template(exe), cases, timeout=120)
    assert result.returncode == 0, result.stderr
    _assert_matches(result, expected)


# --------------------------------------------------------------------------- errors


def test_nonzero_exit_fails_every_case_with_stderr(tmp_path, cases):
    exe = _program(
        tmp_path,
        "exit3.py",
        """
        for i in range(30):
            print(f"diagnostic line {i}", file=sys.stderr)
        print("cannot read the kernel", file=sys.stderr)
        sys.exit(3)
        """,
    )
    result = run_program(_template(exe), cases[:2], timeout=30)
    assert result.returncode == 3
    assert set(result) == {cases[0][0], cases[1][0]}
    for msg in result.values():
        assert isinstance(msg, ProgramError)
        assert "exited with status 3" in msg
        assert "cannot read the kernel" in msg
        assert "last 20 of 31 lines of stderr" in msg
        assert "diagnostic line 11" in msg and "diagnostic line 10\n" not in msg
    assert "diagnostic line 0" in result.stderr  # the whole stderr is kept


def test_timeout_fails_every_case(tmp_path, cases):
    exe = _program(
        tmp_path, "sleepy.py", "print('started', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    start = time.monotonic()
    result = run_program(_template(exe), cases[:2], timeout=1, workdir=work)
    assert time.monotonic() - start < 20
    assert result.returncode is None
    for msg in result.values():
        assert "timed out after 1s" in msg
        assert "started" in msg
    assert list(work.iterdir()) == []


def test_timeout_kills_the_programs_children(tmp_path, cases):
    marker = tmp_path / "child-survived"
    script = tmp_path / "wrapper.sh"
    script.write_text(f"#!/bin/sh\n(sleep 2; touch {shlex.quote(str(marker))}) &\nsleep 60\n")
    script.chmod(0o755)
    result = run_program(_template(script), cases[:1], timeout=1)
    assert "timed out" in result[cases[0][0]]
    time.sleep(1.5)  # the child would have touched the marker by now
    assert not marker.exists(), "the wrapper's background child outlived the timeout"


def test_signal_is_named(tmp_path, cases):
    exe = _program(tmp_path, "segv.py", "os.kill(os.getpid(), signal.SIGSEGV)\n")
    result = run_program(_template(exe), cases[:2], timeout=30)
    assert result.returncode == -11
    for msg in result.values():
        assert "killed by signal SIGSEGV (11)" in msg


def test_wrong_size_output_is_a_per_case_error(tmp_path, cases):
    exe = _program(
        tmp_path,
        "short_y.py",
        """
        lines = open(os.path.join(inp, "cases.txt")).read().split("\\n")[1:]
        for line in filter(None, lines):
            d, n, h, w, c = line.split()
            n, h, w, c = int(n), int(h), int(w), int(c)
            size = n * h * w * c - (1 if d.startswith("0000") else 0)
            open(os.path.join(out, d, "y.bin"), "wb").write(b"\\0" * 4 * size)
            for s in ("BatchNorm_0.mean", "BatchNorm_0.var", "BatchNorm_1.mean",
                      "BatchNorm_1.var"):
                open(os.path.join(out, d, s + ".bin"), "wb").write(b"\\0" * 4 * c)
        print("wrote outputs", file=sys.stderr)
        """,
    )
    result = run_program(_template(exe), cases[2:4], timeout=30)  # f4: n1 3x5, n2 3x5
    bad, good = result[cases[2][0]], result[cases[3][0]]
    assert isinstance(bad, ProgramError)
    assert "exited with status 0 but output file 0000-" in bad
    assert "y.bin has the wrong size: expected 240 bytes" in bad
    assert "found 236 bytes" in bad and "wrote outputs" in bad
    y, stats = good
    assert y.shape == (2, 3, 5, 4) and not y.any()
    assert stats["BatchNorm_1"]["var"].shape == (4,)


def test_missing_outputs_are_per_case_errors(tmp_path, cases):
    exe = _program(tmp_path, "lazy.py", "pass\n")
    result = run_program(_template(exe), cases[:2], timeout=30)
    assert result.returncode == 0
    for msg in result.values():
        assert isinstance(msg, ProgramError)
        assert "y.bin is missing" in msg and "BatchNorm_0.mean.bin is missing" in msg
        assert "stderr was empty" in msg


# --------------------------------------------------------------------------- parse_exec


def test_parse_exec_accepts_paths_with_spaces(tmp_path):
    exe = _program(tmp_path, "my prog.py", "pass\n")
    argv = parse_exec(f"{shlex.quote(str(exe))} --fast {{input}} '{{output}}'")
    assert argv == [str(exe), "--fast", "{input}", "{output}"]
    assert parse_exec("python3 -u x.py {input} {output}")[0] == "python3"


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("", "empty"),
        ("python3 'unterminated {input} {output}", "cannot parse"),
        ("python3 x.py {output}", r"no \{input\} argument"),
        ("python3 x.py {input}", r"no \{output\} argument"),
        ("python3 x.py --in={input} {output}", r"whole argument, found it inside '--in="),
        ("no-such-program-resblock {input} {output}", "not found on PATH"),
        ("./no/such/program {input} {output}", "does not exist"),
    ],
)
def test_parse_exec_errors(template, match):
    with pytest.raises(TargetError, match=match):
        parse_exec(template)


def test_parse_exec_refuses_non_executables(tmp_path):
    script = tmp_path / "not_exec.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(TargetError, match="is a directory"):
        parse_exec(f"{tmp_path}/ {{input}} {{output}}")
    if os.access(script, os.X_OK):
        pytest.skip("execute permissions are not enforced here")
    with pytest.raises(TargetError, match="chmod \\+x"):
        parse_exec(f"{script} {{input}} {{output}}")


def test_run_program_checks_the_template(cases):
    with pytest.raises(TargetError, match=r"no \{output\} argument"):
        run_program(["python3", "{input}"], cases[:1])
