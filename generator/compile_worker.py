"""Forking safely, and the compile worker that does it: a forked child that compiles each
shape group's forward ahead of time while this process does everything else.

XLA compilation dominates cold generation and holds the GIL: the second core can only be
used by a second process. Forking is cheap (~10 ms) but safe only before this process
starts a JAX backend (:func:`can_fork`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def can_fork() -> bool:
    """Forking is safe only on Linux and before this process started a JAX backend
    (XLA's threads do not survive a fork)."""
    if not sys.platform.startswith("linux"):
        return False
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()


class CompileWorker:
    """A forked process that compiles the forward of each shape group ahead of time.

    XLA compilation dominates cold runs and holds the GIL, so it cannot overlap with
    this process's own work in a thread; a child forked after the imports and before
    any JAX backend exists (~10 ms) compiles group after group and hands each
    executable over as a serialized file, while this process derives inputs, runs the
    float64 oracle, hashes and writes. If the child fails, this process compiles
    itself: the worker only ever saves time.
    """

    def __init__(self, groups, precision: str, grad: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="resblock-compile-"))
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                import pickle

                from jax.experimental import serialize_executable

                from resblock.generator.engine import compile_forward

                for i, g in enumerate(groups):
                    exe = (compile_forward(g[0], precision, grad=True) if grad
                           else compile_forward(g[0], precision))
                    payload = serialize_executable.serialize(exe)
                    tmp = self.dir / f".exe-{i}"
                    tmp.write_bytes(pickle.dumps(payload))
                    os.replace(tmp, self.dir / f"exe-{i}")
                code = 0
            except BaseException:  # noqa: BLE001 - the parent falls back to compiling
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        self.alive = True

    def executable(self, i: int):
        """Group ``i``'s executable, waiting for the child; None if it gave up."""
        import pickle
        import time

        from jax.experimental import serialize_executable

        path = self.dir / f"exe-{i}"
        while not path.exists():
            if not self.alive:
                return None
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.alive = False
                continue
            time.sleep(0.002)
        try:
            return serialize_executable.deserialize_and_load(*pickle.loads(path.read_bytes()))
        except Exception:  # noqa: BLE001 - unusable here: the caller compiles instead
            return None

    def close(self):
        if self.alive:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.alive = False
        shutil.rmtree(self.dir, ignore_errors=True)
