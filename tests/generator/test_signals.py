"""SIGINT, SIGTERM and SIGHUP end ``resblock generate`` alike (issue 12): exit 2, no
partial or temporary file, no compile-worker folder, no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


def _processes_in(folder) -> list[int]:
    """PIDs of live processes whose working directory is ``folder``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == str(folder):
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_generate_cleans_up(tmp_path, sig):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "generate", "--preset", "smoke",
                             "-o", "out.h5"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".out.h5.tmp") for p in work.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while _processes_in(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in(work) == []
    assert os.listdir(work) == [] and os.listdir(tmp) == []
