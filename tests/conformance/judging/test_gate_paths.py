"""Paths of the gate that once passed every test whatever they did (issue 12, item 10):
``check --exec`` end to end (the C example on the committed set; a program with wrong
running statistics must fail), and the pytest plugin's goldens, layout and api options.

Each test here fails under a product mutation that the rest of the suite tolerated:
``--exec`` dropping the running statistics, the plugin ignoring an option, the
diagnosis of an NCHW port skipping the layout conversion.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resblock.golden.reader import GoldenFile

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"

# A resblock-program/1 program in Python: the correct NumPy block, or (with --skew) the
# same output with every running variance off by 1%.
PROGRAM = f"""#!{sys.executable}
import json, os, sys
import numpy as np
import importlib.util as _u
_s = _u.spec_from_file_location("_ex", {str(EXAMPLES / 'numpy_float32.py')!r})
_m = _u.module_from_spec(_s); _s.loader.exec_module(_m)
skew = "--skew" in sys.argv
inp, out = [a for a in sys.argv[1:] if a != "--skew"]
doc = json.load(open(os.path.join(inp, "cases.json")))
for case in doc["cases"]:
    a = {{n: np.fromfile(os.path.join(inp, case["dir"], s["file"]), "<f4").reshape(s["shape"])
         for n, s in case["inputs"].items()}}
    tree = {{}}
    for n, v in a.items():
        if n != "x":
            layer, leaf = n.split("/")
            tree.setdefault(layer, {{}})[leaf] = v
    params = {{k: v for k, v in tree.items() if k.startswith("Conv") or "scale" in v}}
    stats = {{k: v for k, v in tree.items() if "mean" in v}}
    y, new = _m.forward(a["x"], params, stats)
    outs = {{"y": y}}
    for layer, d in new.items():
        for leaf, v in d.items():
            outs[f"{{layer}}/{{leaf}}"] = v * np.float32(1.01) if skew and leaf == "var" else v
    for n, s in case["outputs"].items():
        np.asarray(outs[n], "<f4").tofile(os.path.join(out, case["dir"], s["file"]))
"""


def resblock(*args, cwd):
    return subprocess.run([sys.executable, "-m", "resblock", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    p = tmp_path_factory.mktemp("prog") / "block.py"
    p.write_text(PROGRAM)
    p.chmod(0o755)
    return p


def test_exec_program_conforms_and_wrong_statistics_fail(program, smoke_golden, tmp_path):
    exe = shlex.quote(str(program))
    r = resblock("check", "-q", "--exec", f"{exe} {{input}} {{output}}", "--goldens",
                 smoke_golden[0], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = resblock("check", "-q", "--exec", f"{exe} --skew {{input}} {{output}}", "--goldens",
                 smoke_golden[0], cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "out of tolerance: BatchNorm_0/var" in r.stdout or "BatchNorm_1/var" in r.stdout


def test_the_c_example_conforms_on_the_committed_set(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH")
    exe = tmp_path / "resblock_block"
    build = subprocess.run([compiler, "-O2", "-std=c99", "-o", str(exe),
                            str(EXAMPLES / "c_program" / "resblock_block.c"), "-lm"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    r = resblock("check", "-q", "--exec", f"{shlex.quote(str(exe))} {{input}} {{output}}",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CONFORMS" in r.stdout and "0 failed" in r.stdout


def test_plugin_goldens_option_selects_the_file(pytester, smoke_golden):
    with GoldenFile(smoke_golden[0]) as gf:
        n = len(gf.entries)
    result = pytester.runpytest_subprocess(
        "--resblock-impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", "-q", "-p", "resblock",
        "--resblock-goldens", str(smoke_golden[0]))
    result.assert_outcomes(passed=n)


NCHW = f"""
import numpy as np
import importlib.util as _u
_s = _u.spec_from_file_location("_nchw_ex", {str(EXAMPLES / 'numpy_float32.py')!r})
_m = _u.module_from_spec(_s); _s.loader.exec_module(_m)

def forward(x, params, stats):  # NCHW x, OIHW kernels, as a PyTorch port takes them
    assert x.shape[1] == params["Conv_0"]["kernel"].shape[1], "expects NCHW"
    p = {{k: dict(v) for k, v in params.items()}}
    for conv in ("Conv_0", "Conv_1"):
        p[conv]["kernel"] = np.transpose(p[conv]["kernel"], (2, 3, 1, 0))
    y, new = _m.forward(np.transpose(x, (0, 2, 3, 1)), p, stats)
    return np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2))), new
"""


def test_plugin_layout_option_reaches_the_check(pytester, smoke_golden):
    pytester.makepyfile(nchw_block=NCHW)
    args = ["--resblock-impl", f"{pytester.path / 'nchw_block.py'}:forward", "-q", "-p",
            "resblock", "--resblock-goldens", str(smoke_golden[0]), "-k", "n2"]
    ok = pytester.runpytest_inprocess(*args, "--resblock-layout", "nchw")
    ok.assert_outcomes(passed=2, deselected=3)
    wrong = pytester.runpytest_inprocess(*args)  # called NHWC: every selected case fails
    wrong.assert_outcomes(failed=2, deselected=3)


def test_plugin_api_option_reaches_the_check(pytester, smoke_golden):
    # A seeded-API function that answers with the stored reference output (no JAX needed).
    pytester.makepyfile(seeded_block=f"""
import h5py
ANSWERS = {{}}
with h5py.File({str(smoke_golden[0])!r}, "r") as f:
    for g in f["groups"].values():
        for x, y in zip(g["x"][()], g["y"][()]):
            ANSWERS[x[0].tobytes()] = y.reshape(-1)

def forward(seed, x, features):
    return ANSWERS[x.tobytes()]
""")
    args = ["--resblock-impl", f"{pytester.path / 'seeded_block.py'}:forward", "-q", "-p",
            "resblock", "--resblock-goldens", str(smoke_golden[0])]
    result = pytester.runpytest_inprocess(*args, "--resblock-api", "seeded")
    result.assert_outcomes(passed=2)  # the smoke set's two seeded cases only
    result = pytester.runpytest_inprocess(*args)  # functional: every case is an error
    result.assert_outcomes(failed=5)


def test_a_failing_nchw_port_is_diagnosed_in_its_layout(smoke_golden, tmp_path, monkeypatch):
    # The diagnosis compares the port's results (NCHW) with NHWC pitfall twins: without
    # the layout conversion it would end in a traceback instead of naming the mistake.
    from click.testing import CliRunner

    from resblock.cli import cli

    (tmp_path / "nchw_wrong.py").write_text(
        NCHW.replace("_m.forward(np.transpose", "_wrong(np.transpose")
        + "\nfrom resblock.conformance.mistakes.variants import make_forward\n"
          "_wrong = make_forward('missing_residual')\n")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["check", "-q", "--in-process", "--layout", "nchw", "--impl",
                                 "nchw_wrong.py:forward", "--goldens", str(smoke_golden[0])])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "missing_residual" in r.output
