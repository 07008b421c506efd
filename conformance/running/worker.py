"""The implementation in an isolated worker process: ``resblock check``'s default invoker.

:class:`Worker` forks (or spawns) a *reaper* process that forks the worker proper
(:func:`_worker_main`), which loads the target and answers one case per message. Replies
are arrays and plain structures in :mod:`~resblock.conformance.running.wire`'s format,
never pickles: nothing the implementation returns can run code in the checker, and a
reply larger than the case needs is refused before it is read.

Containment (Linux): the reaper is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so
every process the implementation starts, even one that leaves the process group
(``start_new_session=True``, ``setsid``, a double fork), stays its descendant; when the
worker ends, when the checker asks it to (SIGTERM) and when the checker dies (its
``PR_SET_PDEATHSIG`` is SIGTERM, which it handles), it kills all of them before it exits.
The worker dies with the reaper (``PR_SET_PDEATHSIG`` SIGKILL) and always ends by
``os._exit``. Elsewhere the worker runs without a reaper and the checker kills its
process group. A case that raises, exits, crashes, is killed by a signal or outlives
``--timeout`` becomes that case's :class:`~resblock.conformance.running.invoke.Outcome`
error, and the worker is restarted for the next case; the calling of the implementation
itself is ``call_once`` in invoke.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from resblock.conformance.running import wire
from resblock.conformance.running.invoke import Outcome, call_once, case_inputs, clean_text

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    """Linux ``prctl``; False where it does not exist or fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - best effort
        return False


def _die_with_parent(sig=signal.SIGKILL) -> None:
    """Linux: the kernel sends ``sig`` to this process when its parent dies, even by
    SIGKILL."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


def descendants(root: int) -> list[int]:
    """The live descendants of process ``root`` (Linux ``/proc``; zombies left out)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def _end_descendants() -> None:
    """Kill every descendant of this process (a subreaper: orphans come back to it) and
    reap them; repeated until none is left (a process may fork while it is killed)."""
    me = os.getpid()
    for _ in range(200):
        pids = descendants(me)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not pids:
            return
        time.sleep(0.01)


def _reaper_main(conn, target, api, layout, parent_pid, confine_dir=None):  # the reaper
    """Fork the worker, reap whatever comes back to this subreaper, and when the worker
    ends (or SIGTERM comes: the checker asks, or died) kill every descendant and exit with
    the worker's status."""
    code = 70
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        def ended(signum, frame):
            _end_descendants()
            os._exit(128 + signum)

        signal.signal(signal.SIGTERM, ended)
        _die_with_parent(signal.SIGTERM)
        if os.getppid() != parent_pid:  # the checker died before the line above
            os._exit(1)
        if not _prctl(_PR_SET_CHILD_SUBREAPER, 1):
            _worker_main(conn, target, api, layout, parent_pid, confine_dir)  # never returns
        reaper = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker_main(conn, target, api, layout, reaper, confine_dir)  # never returns
        conn.close()
        while True:
            done, status = os.waitpid(-1, 0)
            if done == pid:
                break
        _end_descendants()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)  # the checker sees the worker's signal
            except (OSError, ValueError):
                pass
            code = 128 + sig
        else:
            code = os.WEXITSTATUS(status)
    except BaseException:  # noqa: BLE001 - end whatever happened
        _end_descendants()
    finally:
        os._exit(code)


def _worker_main(conn, target, api, layout, parent_pid, confine_dir=None):  # the worker
    """Load the target, then answer one case per message until told to stop.

    The worker ignores the terminal's signals (the checker decides when it ends) and never
    returns into the caller's code: it ends by ``os._exit``, whatever the implementation
    did to the interpreter. Replies go through :func:`wire.send` (no pickles). With
    ``confine_dir`` it confines itself (:mod:`confine`) before it imports the target and
    says in its "ready" reply what is in force.
    """
    code = 0
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        _die_with_parent()
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(1)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from resblock.conformance.running.targets import check_arity, load_target
        from resblock.errors import TargetError

        isolation = None
        if confine_dir is not None:
            isolation = _confine(target, confine_dir)
        try:
            fn = load_target(target)
            check_arity(fn, target, api)
        except TargetError as e:
            wire.send(conn, "load_error", clean_text(str(e)))
            return
        except BaseException as e:  # noqa: BLE001 - the target broke the interpreter itself
            wire.send(conn, "load_error", clean_text(
                f"--impl {target}: importing it left the worker unable to go on "
                f"({type(e).__name__}: {e}); does the module clear sys.modules or replace "
                "builtins?"))
            return
        wire.send(conn, "ready", isolation)
        while True:
            try:
                inputs = conn.recv()  # from the checker: trusted
            except (EOFError, OSError):
                return
            if inputs is None:
                return
            try:
                out = call_once(fn, api, layout, inputs, catch=BaseException)
                head, arrays = wire.encode("ok", outcome=out)
            except BaseException as e:  # noqa: BLE001 - a broken interpreter
                wire.send(conn, "error", clean_text(
                    f"returned an object that cannot be sent back from the worker: "
                    f"{type(e).__name__}: {e}"))
                continue
            wire.send_encoded(conn, head, arrays)
    except BaseException:  # noqa: BLE001 - the pipe broke or the interpreter is unusable
        code = 70
    finally:
        os._exit(code)


def _confine(target: str, folder: str) -> str:
    """Confine this worker to reading its interpreter's paths and the target's folder and
    to writing ``folder`` (its TMPDIR from now on); what is in force, in words."""
    import tempfile

    import resblock.golden
    from resblock.conformance.running import confine

    os.environ["TMPDIR"] = tempfile.tempdir = folder
    extra = []
    path = target.rsplit(":", 1)[0]
    if path.endswith(".py"):
        extra.append(os.path.dirname(os.path.abspath(path)))
    extra += list(resblock.__path__)  # the kit stays importable (conformance.convert)
    return confine.confine(folder, extra, hidden=list(resblock.golden.__path__))


def _use_fork() -> bool:
    """Fork (cheap, inherits the loaded kit) on Linux when nothing multithreaded runs."""
    import sys
    import threading

    return (sys.platform.startswith("linux") and threading.active_count() == 1
            and not any(m in sys.modules for m in ("jax", "torch", "tensorflow")))


def exit_description(code) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def result_limits(case) -> wire.Limits:
    """The largest reply read for ``case``: an array may hold float64 or complex64 of
    the largest shape the contract knows (so that a wrong dtype is named, not refused),
    and the whole result 16 of them (output, statistics, intermediates, gradients)."""
    f = case.features
    largest = max(case.n * case.h * case.w * f, 9 * f * f)
    per_array = 8 * largest + 4096
    return wire.Limits(per_array, 16 * per_array)


class Worker:
    """The implementation in a separate process (the default of ``resblock check``).

    A case that exits, crashes, is killed by a signal or outlives ``timeout`` becomes
    that case's error; the worker is then restarted for the next case. The worker is
    forked (Linux, single-threaded caller: milliseconds; elsewhere it is spawned), and
    ``resblock check`` starts it (:meth:`start`) before it opens the goldens, so the
    implementation's imports run on another core while the goldens are verified. It and
    its process group are killed when the run ends, whatever ends it.
    """

    poll_s = 0.25  # how often a waiting checker looks whether the worker still lives

    def __init__(self, target, api, layout, timeout=None, confine=False):
        """``confine``: the worker confines its own filesystem access (Landlock, where
        the platform has it: the graders' mode); :attr:`isolation` then says what was in
        force for the last worker started."""
        import multiprocessing as mp

        self.ctx = mp.get_context("fork" if _use_fork() else "spawn")
        self.target, self.api, self.layout, self.timeout = target, api, layout, timeout
        self.proc = self.conn = None
        self.busy = False  # a case is in the worker's hands
        self.loading = False  # started, "ready" not yet received
        self.confine_dir = None
        if confine:
            import tempfile

            self.confine_dir = tempfile.mkdtemp(prefix="resblock-worker-")
        self.isolation = ("worker process" + (", subreaper" if sys.platform.startswith(
            "linux") else "") + ("" if confine else ", no filesystem confinement"))

    def start(self) -> None:
        """Start the worker without waiting for it to load the target; a load error is
        raised by the first :meth:`run`."""
        if self.proc is None:
            self._spawn()
            self.loading = True

    def wait_ready(self) -> None:
        """Wait until the worker has loaded the target.

        Raises:
          TargetError: loading failed, or the worker ended or hung while loading."""
        if self.proc is None:
            self._start()
        elif self.loading:
            self._await_ready()

    def _start(self):
        self._spawn()
        self._await_ready()

    def _spawn(self):
        sys.stdout.flush()
        sys.stderr.flush()
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_reaper_main, daemon=True,
                                     args=(child, self.target, self.api, self.layout,
                                           os.getpid(), self.confine_dir))
        self.proc.start()
        try:
            os.setpgid(self.proc.pid, self.proc.pid)  # also done by the child: no race
        except OSError:
            pass
        child.close()
        self.conn = parent

    def _await_ready(self):
        from resblock.errors import TargetError

        self.loading = False
        msg = self._receive(max(60.0, self.timeout or 0), wire.Limits())
        if msg is None or msg[0] != "ready":
            why = (msg[1] if msg and msg[0] in ("load_error", "refused") else
                   "the worker did not start within 60 s" if msg is None else
                   f"the worker process ended while loading the target "
                   f"({exit_description(msg[1])})")
            self._kill()
            raise TargetError(clean_text(why) if msg and msg[0] == "load_error"
                              else f"--impl {self.target}: {why}")
        if self.confine_dir is not None:
            self.isolation = "worker process, subreaper, " + clean_text(msg[1] or "")

    def _receive(self, timeout, limits):
        """The worker's next reply as ``(kind, text or Outcome)``, ``("died", exitcode)``,
        ``("refused", why)`` for a malformed or oversized reply, or None after
        ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            m = wire.receive(self.conn, limits, deadline, alive=self.proc.is_alive,
                             poll_s=self.poll_s)
        except TimeoutError:
            return None
        except (EOFError, OSError):
            return self._died()
        except wire.WireError as e:
            return ("refused", str(e))
        if m["kind"] != "ok":
            return (m["kind"], m["text"] or "")
        return ("ok", Outcome(result=m["result"], error=m["text"], mutated=m["mutated"],
                              seconds=max(0.0, float(m["seconds"]))))

    def _died(self):
        self.proc.join(5)
        return ("died", self.proc.exitcode)

    def _kill(self):
        if self.proc is not None:
            if self.proc.exitcode is None:  # the reaper ends every descendant first
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except OSError:
                    pass
                self.proc.join(5)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            if self.proc.exitcode is None:
                self.proc.kill()
            self.proc.join()
            self.conn.close()
        self.proc = self.conn = None

    def run(self, gcs):
        outs = []
        for gc in gcs:
            if self.proc is None:
                self._start()
            elif self.loading:
                self._await_ready()
            t0 = time.perf_counter()
            self.busy = True
            try:
                self.conn.send(case_inputs(gc, self.api))
            except OSError:
                msg = self._died()
            else:
                msg = self._receive(self.timeout, result_limits(gc.case))
            self.busy = False
            seconds = time.perf_counter() - t0
            if msg is None:
                self._kill()
                outs.append(Outcome(error=f"timed out after {self.timeout:g} s (--timeout); "
                                          "the worker was killed",
                                    seconds=seconds))
            elif msg[0] == "ok":
                outs.append(msg[1])
            elif msg[0] == "error":
                outs.append(Outcome(error=msg[1], seconds=seconds))
            elif msg[0] in ("refused", "ready", "load_error"):
                self._kill()  # what it sends next cannot be trusted
                why = msg[1] if msg[0] == "refused" else \
                    f"the worker sent an unexpected {msg[0]!r} reply"
                outs.append(Outcome(error=f"the result breaks the contract: {why}",
                                    seconds=seconds))
            else:
                code = msg[1]
                self._kill()
                how = ("ended the worker process with exit status 0 (os._exit? an "
                       "implementation must return its result)" if code == 0 else
                       "left the worker process unable to go on (it broke the interpreter: "
                       "sys.modules, builtins or the standard streams)" if code == 70 else
                       f"crashed the worker process ({exit_description(code)})")
                outs.append(Outcome(error=f"the implementation {how}", seconds=seconds))
        return outs

    def close(self):
        """End the worker: politely when it is idle, at once when the run was interrupted
        in the middle of a case; then kill its process group (what the implementation
        started)."""
        if self.proc is not None:
            if not self.busy and not self.loading:
                try:
                    self.conn.send(None)
                    self.proc.join(2)
                except OSError:
                    pass
            self._kill()  # also any process the implementation left in its group
        if self.confine_dir is not None:
            import shutil

            shutil.rmtree(self.confine_dir, ignore_errors=True)
            self.confine_dir = None
