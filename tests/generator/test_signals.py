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


# Six shape groups, written one by one as each is computed: the temporary file exists
# for seconds, not for the last milliseconds of a one-group grid.
GRID = ["--family", "functional", "--shapes", "4x4,5x5,6x6,7x7,8x8,9x9", "--features", "4"]


def _interrupt_once(work, tmp, sig):
    """Start a generation, signal it once its temporary file exists. Returns
    ``(returncode, stdout + stderr)``, or None when it finished before the signal came
    (a loaded machine can let a whole write pass between two polls)."""
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "generate", *GRID,
                             "-o", "out.h5"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".out.h5.tmp") for p in work.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    if proc.returncode == 0 and "wrote out.h5" in out + err:
        # finished first: the file is whole and nothing temporary is left
        assert [p.name for p in work.iterdir()] == ["out.h5"], out + err
        (work / "out.h5").unlink()
        return None
    return proc.returncode, out + err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_generate_cleans_up(tmp_path, sig):
    if signal.getsignal(sig) == signal.SIG_IGN:  # e.g. under nohup: inherited, and kept
        pytest.skip(f"{signal.Signals(sig).name} is ignored in this process tree; "
                    "resblock keeps a signal its caller ignores ignored, by design")
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    for _ in range(3):
        result = _interrupt_once(work, tmp, sig)
        if result is not None:
            break
    assert result is not None, "three generations finished before their signal arrived"
    code, text = result
    assert code == 2, text
    assert f"interrupted by {signal.Signals(sig).name}" in text and "Traceback" not in text
    deadline = time.monotonic() + 10
    while _processes_in(work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in(work) == []
    assert os.listdir(work) == [] and os.listdir(tmp) == []
