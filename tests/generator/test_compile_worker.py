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
import os, sys, time
from resblock.generator import compile_worker, engine, run
from resblock.generator.grid import preset_cases
assert compile_worker.can_fork()
used, stolen = [], []
orig = compile_worker.CompileWorker.executable
def executable(self, i):
    exe = orig(self, i)
    used.append(exe is not None)
    stolen.extend(sorted(self._stolen))
    return exe
compile_worker.CompileWorker.executable = executable
if {broken}:
    def broken(case, precision="highest", grad=False):
        raise RuntimeError("compile worker broken on purpose")
    engine.compile_forward = broken
if {slow}:  # the child compiles slowly: the parent takes groups from the end meanwhile
    parent, fast = os.getpid(), engine.compile_forward
    def slow(case, precision="highest", grad=False):
        if os.getpid() != parent:
            time.sleep(1.5)
        return fast(case, precision, grad=grad)
    engine.compile_forward = slow
run.generate(preset_cases("smoke"), {out!r}, preset="smoke", jobs=1, stages=True)
print("USED", sum(used), len(used))
print("STOLEN", len(set(stolen)))
"""


@pytest.mark.parametrize("broken, slow", [(False, False), (True, False), (False, True)])
def test_compile_worker_bit_identical(smoke_golden, tmp_path, broken, slow):
    full, _ = smoke_golden
    out = tmp_path / "cw.h5"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    r = subprocess.run([sys.executable, "-c",
                        CODE.format(broken=broken, slow=slow, out=str(out))],
                       env=env, capture_output=True, text=True, check=True)
    used = next(line for line in r.stdout.splitlines() if line.startswith("USED")).split()
    stolen = int(next(line for line in r.stdout.splitlines()
                      if line.startswith("STOLEN")).split()[1])
    if slow:  # waiting, the parent compiled some of the last groups itself
        assert used[1:] == ["5", "5"] and 1 <= stolen <= 4, r.stdout
    elif broken:
        assert used[1:] == ["0", "5"], r.stdout  # no executable: the parent compiled each
        assert "compile worker broken on purpose" in r.stderr
    else:
        assert used[1:] == ["5", "5"], r.stdout  # every group came from the worker
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["cw.h5"]
