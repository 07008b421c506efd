"""Call an implementation on golden cases: in-process, in a worker process, or a program.

Every invoker turns a list of cases into one :class:`Outcome` per case; an exception,
a hang (``--timeout``) or a crashing native implementation becomes that case's error,
never the runner's.
"""

from __future__ import annotations

import signal
import time
import traceback
from dataclasses import dataclass

import numpy as np

from resblock.conformance.adapters import frozen_copy, frozen_tree, to_user_layout


@dataclass
class Outcome:
    result: object = None
    error: str | None = None
    mutated: tuple = ()
    seconds: float = 0.0


def case_inputs(gc, api: str) -> dict:
    """The picklable inputs of a golden case for ``api`` (NHWC, kit layout). Only the
    backward reads the cotangent (and with it the gradient part of the file)."""
    out = {"x": gc.x, "params": gc.params, "stats": gc.batch_stats_in,
           "seed": gc.case.seed, "features": gc.case.features}
    if api == "backward":
        out["y_bar"] = gc.y_bar
    return out


def _plain(obj):
    """Arrays of any framework -> NumPy; containers kept; for pickling out of a worker."""
    from resblock.conformance.adapters import as_numpy

    if isinstance(obj, dict) or hasattr(obj, "unfreeze"):
        d = obj.unfreeze() if hasattr(obj, "unfreeze") else obj
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_plain(v) for v in obj)
    try:
        return as_numpy(obj, "value")
    except Exception:  # noqa: BLE001 - left for the contract check to describe
        return obj


_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9, 10)} | {127: "\\x7f"}


def clean_text(text: str) -> str:
    """Text from an implementation made safe to print and to put in XML: control
    characters (NUL, ESC, ...) and lone surrogates become visible escapes."""
    text = str(text).translate(_CONTROL)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


IN_PROCESS_CATCH = (Exception, SystemExit, GeneratorExit)


def call_once(fn, api: str, layout: str, inputs: dict, catch=IN_PROCESS_CATCH) -> Outcome:
    """Run the implementation on fresh read-only copies; report exceptions and mutation.

    ``catch``: what counts as the implementation's failure (in a worker process,
    everything, ``KeyboardInterrupt`` included; in-process, the user's Ctrl-C still stops
    the run)."""
    x, params = to_user_layout(inputs["x"], inputs["params"], layout)
    xf, pf, sf = frozen_copy(x), frozen_tree(params), frozen_tree(inputs["stats"])
    if api == "backward":
        y_bar, _ = to_user_layout(inputs["y_bar"], {}, layout)
        ybf = frozen_copy(y_bar)
    t0 = time.perf_counter()
    try:
        if api == "seeded":
            result = fn(inputs["seed"], xf[0], inputs["features"])
        elif api == "backward":
            result = fn(xf, pf, sf, ybf)
        else:
            result = fn(xf, pf, sf)
        result = _plain(result)
    except catch as e:  # noqa: BLE001 - the implementation may raise anything
        try:
            tb = traceback.format_exc(limit=-3).rstrip().splitlines()
        except Exception:  # noqa: BLE001 - a broken interpreter (sys.modules cleared, ...)
            tb = []
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 - __str__ itself raises
            text = "<the exception's message cannot be printed>"
        msg = f"raised {type(e).__name__}: {text}"
        if isinstance(e, SystemExit):
            msg = f"called sys.exit({e.code!r}); an implementation must return, not exit"
        if "read-only" in text:
            msg += " (inputs are read-only: the implementation must not modify them in place)"
        return Outcome(error=clean_text(msg + "\n    " + "\n    ".join(tb[-4:])),
                       seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    mutated = []
    if not np.array_equal(xf, x):
        mutated.append("x")
    if api == "backward" and not np.array_equal(ybf, y_bar):
        mutated.append("y_bar")
    for tree_name, got, want in (("params", pf, params), ("batch_stats", sf, inputs["stats"])):
        for layer, leaves in want.items():
            for leaf, a in leaves.items():
                mine = got.get(layer, {}).get(leaf) if isinstance(got.get(layer), dict) \
                    else None
                if mine is None:
                    mutated.append(f"{tree_name}/{layer}/{leaf} (deleted)")
                elif not np.array_equal(mine, a):
                    mutated.append(f"{tree_name}/{layer}/{leaf}")
    return Outcome(result=result, mutated=tuple(mutated), seconds=seconds)


class InProcess:
    def __init__(self, fn, api, layout):
        self.fn, self.api, self.layout = fn, api, layout

    def run(self, gcs):
        return [call_once(self.fn, self.api, self.layout, case_inputs(gc, self.api))
                for gc in gcs]

    def close(self):
        pass


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the checker dies, even by SIGKILL."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - best effort
        pass


def _worker_main(conn, target, api, layout, parent_pid):  # runs in the worker process
    """Load the target, then answer one case per message until told to stop.

    The worker leads its own process group (so the checker can kill it together with any
    process the implementation started), ignores the terminal's signals (the checker
    decides when it ends) and never returns into the caller's code: it ends by
    ``os._exit``, whatever the implementation did to the interpreter.
    """
    import os

    code = 0
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        _die_with_parent()
        if os.getppid() != parent_pid:  # the checker died before the line above
            os._exit(1)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from resblock.conformance.targets import check_arity, load_target
        from resblock.errors import TargetError

        try:
            fn = load_target(target)
            check_arity(fn, target, api)
        except TargetError as e:
            conn.send(("load_error", clean_text(str(e))))
            return
        except BaseException as e:  # noqa: BLE001 - the target broke the interpreter itself
            conn.send(("load_error", clean_text(
                f"--impl {target}: importing it left the worker unable to go on "
                f"({type(e).__name__}: {e}); does the module clear sys.modules or replace "
                "builtins?")))
            return
        conn.send(("ready", None))
        while True:
            try:
                inputs = conn.recv()
            except (EOFError, OSError):
                return
            if inputs is None:
                return
            try:
                out = call_once(fn, api, layout, inputs, catch=BaseException)
                conn.send(("ok", out))
            except BaseException as e:  # noqa: BLE001 - unpicklable result, broken interpreter
                conn.send(("error", clean_text(f"returned an object that cannot be sent back "
                                               f"from the worker: {type(e).__name__}: {e}")))
    except BaseException:  # noqa: BLE001 - the pipe broke or the interpreter is unusable
        code = 70
    finally:
        os._exit(code)


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

    def __init__(self, target, api, layout, timeout=None):
        import multiprocessing as mp

        self.ctx = mp.get_context("fork" if _use_fork() else "spawn")
        self.target, self.api, self.layout, self.timeout = target, api, layout, timeout
        self.proc = self.conn = None
        self.busy = False  # a case is in the worker's hands
        self.loading = False  # started, "ready" not yet received

    def start(self) -> None:
        """Start the worker without waiting for it to load the target; a load error is
        raised by the first :meth:`run`."""
        if self.proc is None:
            self._spawn()
            self.loading = True

    def _start(self):
        self._spawn()
        self._await_ready()

    def _spawn(self):
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, daemon=True,
                                     args=(child, self.target, self.api, self.layout,
                                           os.getpid()))
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
        msg = self._receive(max(60.0, self.timeout or 0))
        if msg is None or msg[0] != "ready":
            why = (msg[1] if msg and msg[0] == "load_error" else
                   "the worker did not start within 60 s" if msg is None else
                   f"the worker process ended while loading the target "
                   f"({exit_description(msg[1])})")
            self._kill()
            raise TargetError(why if msg and msg[0] == "load_error"
                              else f"--impl {self.target}: {why}")

    def _receive(self, timeout):
        """The worker's next message, ``("died", exitcode)``, or None after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.poll_s if deadline is None else min(self.poll_s,
                                                             deadline - time.monotonic())
            try:
                if self.conn.poll(max(0.0, left)):
                    return self.conn.recv()
            except (EOFError, OSError):
                return self._died()
            if not self.proc.is_alive():
                try:
                    if self.conn.poll(0):
                        return self.conn.recv()
                except (EOFError, OSError):
                    pass
                return self._died()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _died(self):
        self.proc.join(5)
        return ("died", self.proc.exitcode)

    def _kill(self):
        import os

        if self.proc is not None:
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
                msg = self._receive(self.timeout)
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


class Program:
    """An external program speaking resblock-program/1 (spec/PROGRAM_PROTOCOL.md)."""

    def __init__(self, template, timeout, api: str = "functional"):
        from resblock.conformance.program import parse_exec

        parse_exec(template)
        self.template, self.timeout, self.api = template, timeout, api

    def run(self, gcs):
        from resblock.conformance.program import run_program

        backward = self.api == "backward"
        batch = [(gc.id, gc.x, gc.params, gc.batch_stats_in) + ((gc.y_bar,) if backward else ())
                 for gc in gcs]
        t0 = time.perf_counter()
        res = run_program(self.template, batch, timeout=self.timeout, backward=backward)
        per = (time.perf_counter() - t0) / max(1, len(gcs))
        outs = []
        for gc in gcs:
            r = res.get(gc.id, "the program produced no result for this case")
            if isinstance(r, str):
                outs.append(Outcome(error=r, seconds=per))
            else:
                outs.append(Outcome(result=(r[0], r[1]), seconds=per))
        return outs

    def close(self):
        pass
