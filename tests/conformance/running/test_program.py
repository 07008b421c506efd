"""Tests of conformance/running/program.py, the ``resblock-program/1`` runner
(spec/PROGRAM_PROTOCOL.md).

The C example (examples/c_program/resblock_block.c) is built with the system C compiler
and compared with the Flax reference ``resblock.spec.reference.apply_block`` on derived
non-init variables; a small Python program that reads ``cases.json`` checks the JSON
side of the protocol without a compiler. The error paths (non-zero exit, timeout,
signal, wrong-size and missing outputs, bad ``--exec`` templates) use tiny programs
written to ``tmp_path``.
"""

from __future__ import annotations

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

from resblock.conformance.running.program import (
    ProgramError,
    parse_exec,
    run_program,
    write_inputs,
)
from resblock.errors import TargetError
from resblock.spec.constants import STAT_NAMES

REPO = Path(__file__).resolve().parents[3]
C_SOURCE = REPO / "examples" / "c_program" / "resblock_block.c"
OUT_TOL = 1e-4  # max abs error on y for N(0, 1) inputs
STATS_TOL = 1e-5  # max abs error on the running mean/var

@pytest.fixture(scope="module")
def expected(program_cases):
    from resblock.spec.reference import apply_block

    out = {}
    for case_id, x, params, stats in program_cases:
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


# --------------------------------------------------------------------------- success


def test_c_example_matches_reference(c_program, program_cases, expected, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_program(_template(c_program), program_cases, timeout=60, workdir=work)
    assert result.returncode == 0, result.stderr
    _assert_matches(result, expected)
    assert list(work.iterdir()) == [], "the temporary directory must be removed"


def test_c_example_one_shape_group_per_run(c_program, program_cases, expected):
    """How the runner calls it: one batch per shape group, the argv given as a list."""
    groups: dict = {}
    for case in program_cases:
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


def test_c_example_reports_short_input_file(c_program, program_cases, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    doc = write_inputs(inp, program_cases[3:4])
    d = doc["cases"][0]["dir"]
    (inp / d / "Conv_1.bias.bin").write_bytes(b"\0" * 12)  # 3 of 4 values
    (tmp_path / "out" / d).mkdir(parents=True)
    proc = subprocess.run(
        [str(c_program), str(inp), str(tmp_path / "out")], text=True, capture_output=True
    )
    assert proc.returncode == 1
    assert "Conv_1.bias.bin is too short: expected 16 bytes" in proc.stderr
    assert "found 12" in proc.stderr


def test_json_program_matches_reference(tmp_path, program_cases, expected):
    """A program that reads cases.json (shapes included) instead of cases.txt."""
    exe = _program(
        tmp_path,
        "json_block.py",
        """
        import numpy as np
        from resblock.conformance.mistakes.variants import Variant, make_forward

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
    result = run_program(_template(exe), program_cases, timeout=120)
    assert result.returncode == 0, result.stderr
    _assert_matches(result, expected)


# --------------------------------------------------------------------------- errors


def test_nonzero_exit_fails_every_case_with_stderr(tmp_path, program_cases):
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
    result = run_program(_template(exe), program_cases[:2], timeout=30)
    assert result.returncode == 3
    assert set(result) == {program_cases[0][0], program_cases[1][0]}
    for msg in result.values():
        assert isinstance(msg, ProgramError)
        assert "exited with status 3" in msg
        assert "cannot read the kernel" in msg
        assert "last 20 of 31 lines of stderr" in msg
        assert "diagnostic line 11" in msg and "diagnostic line 10\n" not in msg
    assert "diagnostic line 0" in result.stderr  # the whole stderr is kept


def test_timeout_fails_every_case(tmp_path, program_cases):
    exe = _program(
        tmp_path, "sleepy.py", "print('started', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    start = time.monotonic()
    result = run_program(_template(exe), program_cases[:2], timeout=1, workdir=work)
    assert time.monotonic() - start < 20
    assert result.returncode is None
    for msg in result.values():
        assert "timed out after 1s" in msg
        assert "started" in msg
    assert list(work.iterdir()) == []


def test_timeout_kills_the_programs_children(tmp_path, program_cases):
    marker = tmp_path / "child-survived"
    script = tmp_path / "wrapper.sh"
    script.write_text(f"#!/bin/sh\n(sleep 2; touch {shlex.quote(str(marker))}) &\nsleep 60\n")
    script.chmod(0o755)
    result = run_program(_template(script), program_cases[:1], timeout=1)
    assert "timed out" in result[program_cases[0][0]]
    time.sleep(1.5)  # the child would have touched the marker by now
    assert not marker.exists(), "the wrapper's background child outlived the timeout"


def test_signal_is_named(tmp_path, program_cases):
    exe = _program(tmp_path, "segv.py", "os.kill(os.getpid(), signal.SIGSEGV)\n")
    result = run_program(_template(exe), program_cases[:2], timeout=30)
    assert result.returncode == -11
    for msg in result.values():
        assert "killed by signal SIGSEGV (11)" in msg


def test_wrong_size_output_is_a_per_case_error(tmp_path, program_cases):
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
    result = run_program(_template(exe), program_cases[2:4], timeout=30)  # f4: n1 3x5, n2 3x5
    bad, good = result[program_cases[2][0]], result[program_cases[3][0]]
    assert isinstance(bad, ProgramError)
    assert "exited with status 0 but output file 0000-" in bad
    assert "y.bin has the wrong size: expected 240 bytes" in bad
    assert "found 236 bytes" in bad and "wrote outputs" in bad
    y, stats = good
    assert y.shape == (2, 3, 5, 4) and not y.any()
    assert stats["BatchNorm_1"]["var"].shape == (4,)


def test_missing_outputs_are_per_case_errors(tmp_path, program_cases):
    exe = _program(tmp_path, "lazy.py", "pass\n")
    result = run_program(_template(exe), program_cases[:2], timeout=30)
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


def test_run_program_checks_the_template(program_cases):
    with pytest.raises(TargetError, match=r"no \{output\} argument"):
        run_program(["python3", "{input}"], program_cases[:1])
