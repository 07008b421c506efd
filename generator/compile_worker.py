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
        self.groups, self.precision, self.grad = groups, precision, grad
        self._stolen: dict = {}  # group -> executable this process compiled itself
        self._steal_from = len(groups) - 1  # this process takes groups from the end
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                import pickle

                from jax.experimental import serialize_executable

                from resblock.generator.engine import compile_forward

                for i, g in enumerate(groups):
                    if not self._claim(i):  # the parent compiled it while waiting
                        continue
                    exe = compile_forward(g[0], precision, grad=grad)
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

    def _claim(self, i: int) -> bool:
        """Take group ``i`` for compilation (atomically: the first process to ask)."""
        try:
            os.close(os.open(self.dir / f"claim-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def _steal(self) -> bool:
        """While waiting for the child, compile the last group nobody has taken (the
        child goes from the first): both cores compile when compilation is the longer
        job, as it is for ``--grad``'s forward+VJP programs. False when none is left or
        compiling here failed (then the waiting goes on as before)."""
        from resblock.generator.engine import compile_forward

        while self._steal_from >= 0 and not self._claim(self._steal_from):
            self._steal_from -= 1
        if self._steal_from < 0:
            return False
        j = self._steal_from
        self._steal_from -= 1
        try:
            self._stolen[j] = compile_forward(self.groups[j][0], self.precision,
                                              grad=self.grad)
        except Exception:  # noqa: BLE001 - group j is compiled by its runner's jit
            self._steal_from = -1
            return False
        return True

    def executable(self, i: int):
        """Group ``i``'s executable: compiled by the child, or by this process while it
        waited (:meth:`_steal`); None if nobody compiled it (the runner's jit does)."""
        import pickle
        import time

        from jax.experimental import serialize_executable

        path = self.dir / f"exe-{i}"
        stealing = True
        while not path.exists():
            if i in self._stolen:
                return self._stolen.pop(i)
            if not self.alive:
                return None
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.alive = False
                continue
            if self._claim(i):  # the child has not reached it: compile it here
                return None
            if stealing:
                stealing = self._steal()
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
