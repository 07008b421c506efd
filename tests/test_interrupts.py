"""resblock/interrupts.py: a termination signal that arrives while a child process is
being started is held until the caller holds the child, then raised where the caller's
``finally`` ends it (a program that started and waited before ``Popen`` returned was
left running after ``resblock check`` exited on SIGTERM)."""

from __future__ import annotations

import os
import signal

import pytest

from resblock import interrupts
from resblock.cli import install_signal_handlers
from resblock.errors import Interrupted


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for s in saved:
        signal.signal(s, signal.SIG_DFL if s != signal.SIGINT else signal.default_int_handler)
    install_signal_handlers()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_a_signal_inside_is_held_then_raised(handlers):
    reached = False
    with interrupts.deferred() as pending:
        os.kill(os.getpid(), signal.SIGTERM)
        reached = True  # the handler did not raise here
    assert reached and pending.signals == [signal.SIGTERM]
    with pytest.raises(Interrupted) as e:
        pending.raise_now()
    assert e.value.signum == signal.SIGTERM


def test_outside_a_deferral_the_signal_raises_at_once(handlers):
    with pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(10**6):  # the handler runs at the next bytecode
            pass
    with interrupts.deferred() as pending:
        pass
    pending.raise_now()  # nothing recorded: nothing raised
    assert not interrupts.defer(signal.SIGTERM)  # no open deferral


def test_exec_program_is_ended_when_the_signal_comes_while_it_starts(handlers, tmp_path):
    """The window itself: the signal arrives while Popen starts the program."""
    import subprocess
    import time

    from resblock.conformance.running import program

    pids = tmp_path / "pids"
    real_popen = subprocess.Popen

    def popen_then_signal(*a, **k):
        proc = real_popen(*a, **k)
        deadline = time.monotonic() + 30
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # before Popen has returned to the caller
        return proc

    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 600 &\necho $$ $! > {pids}\nwait\n")
    script.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setattr(subprocess, "Popen", popen_then_signal)
    try:
        with pytest.raises(Interrupted):
            program.run_process([str(script)], timeout=60)
    finally:
        mp.undo()
    started = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.05)
    assert not any(_alive(p) for p in started)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
