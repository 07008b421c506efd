"""generator/compile_worker.py CompileWorker: forwards compiled by a forked child change no
bits, and a failing child only costs time (fresh processes: a pytest process has a JAX
backend already, so it never forks)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from resblock.golden.reader import GoldenFile

CODE = """
import sys
from resblock.generator import compile_worker, engine, run
from resblock.generator.grid import preset_cases
assert compile_worker.can_fork()
used = []
orig = compile_worker.CompileWorker.executable
def executable(self, i):
    exe = orig(self, i)
    used.append(exe is not None)
    return exe
compile_worker.CompileWorker.executable = executable
if {broken}:
    def broken(case, precision="highest"):
        raise RuntimeError("compile worker broken on purpose")
    engine.compile_forward = broken
run.generate(preset_cases("smoke"), {out!r}, preset="smoke", jobs=1, stages=True)
print("USED", sum(used), len(used))
"""


@pytest.mark.parametrize("broken", [False, True])
def test_compile_worker_bit_identical(smoke_golden, tmp_path, broken):
    full, _ = smoke_golden
    out = tmp_path / "cw.h5"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    r = subprocess.run([sys.executable, "-c", CODE.format(broken=broken, out=str(out))],
                       env=env, capture_output=True, text=True, check=True)
    used = next(line for line in r.stdout.splitlines() if line.startswith("USED")).split()
    if broken:
        assert used[1:] == ["0", "5"], r.stdout  # no executable: the parent compiled each
        assert "compile worker broken on purpose" in r.stderr
    else:
        assert used[1:] == ["5", "5"], r.stdout  # every group came from the worker
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["cw.h5"]
