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


def case_inputs(gc) -> dict:
    """The picklable inputs of a golden case (NHWC, kit layout)."""
    return {"x": gc.x, "params": gc.params, "stats": gc.batch_stats_in,
            "seed": gc.case.seed, "features": gc.case.features}


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


def call_once(fn, api: str, layout: str, inputs: dict) -> Outcome:
    """Run the implementation on fresh read-only copies; report exceptions and mutation."""
    x, params = to_user_layout(inputs["x"], inputs["params"], layout)
    xf, pf, sf = frozen_copy(x), frozen_tree(params), frozen_tree(inputs["stats"])
    t0 = time.perf_counter()
    try:
        if api == "seeded":
            result = fn(inputs["seed"], xf[0], inputs["features"])
        else:
            result = fn(xf, pf, sf)
        result = _plain(result)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the implementation may raise anything
        tb = traceback.format_exc(limit=-3).rstrip().splitlines()
        msg = f"raised {type(e).__name__}: {e}"
        if isinstance(e, SystemExit):
            msg = f"called sys.exit({e.code!r}); an implementation must return, not exit"
        if "read-only" in str(e):
            msg += " (inputs are read-only: the implementation must not modify them in place)"
        return Outcome(error=msg + "\n    " + "\n    ".join(tb[-4:]),
                       seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    mutated = []
    if not np.array_equal(xf, x):
        mutated.append("x")
    for tree_name, got, want in (("params", pf, params), ("batch_stats", sf, inputs["stats"])):
        for layer, leaves in want.items():
            for leaf, a in leaves.items():
                if not np.array_equal(got[layer][leaf], a):
                    mutated.append(f"{tree_name}/{layer}/{leaf}")
    return Outcome(result=result, mutated=tuple(mutated), seconds=seconds)


class InProcess:
    def __init__(self, fn, api, layout):
        self.fn, self.api, self.layout = fn, api, layout

    def run(self, gcs):
        return [call_once(self.fn, self.api, self.layout, case_inputs(gc)) for gc in gcs]

    def close(self):
        pass


def _worker_main(conn, target, api, layout):  # runs in the worker process
    from resblock.conformance.targets import load_target

    try:
        fn = load_target(target)
    except Exception as e:  # noqa: BLE001
        conn.send(("load_error", str(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            inputs = conn.recv()
        except EOFError:
            return
        if inputs is None:
            return
        out = call_once(fn, api, layout, inputs)
        try:
            conn.send(("ok", out))
        except Exception as e:  # noqa: BLE001 - unpicklable result
            conn.send(("ok", Outcome(error=f"returned an object that cannot be sent back "
                                            f"from the worker: {e}")))


class Worker:
    """The implementation in a separate process: bounded by ``timeout``, crash-proof."""

    def __init__(self, target, api, layout, timeout):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.target, self.api, self.layout, self.timeout = target, api, layout, timeout
        self.proc = self.conn = None

    def _start(self):
        from resblock.errors import TargetError

        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main,
                                     args=(child, self.target, self.api, self.layout),
                                     daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(max(60.0, self.timeout or 0)):
            self._kill()
            raise TargetError(f"--impl {self.target}: the worker did not start within 60 s")
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self._kill()
            raise TargetError(f"--impl {self.target}: the worker process died while loading "
                              f"the target (exit status {code})") from None
        if kind == "load_error":
            self._kill()
            raise TargetError(payload)

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = self.conn = None

    def run(self, gcs):
        outs = []
        for gc in gcs:
            if self.proc is None:
                self._start()
            t0 = time.perf_counter()
            try:
                self.conn.send(case_inputs(gc))
                ready = self.conn.poll(self.timeout)
                if ready:
                    kind, out = self.conn.recv()
                    outs.append(out)
                    continue
                self._kill()
                outs.append(Outcome(error=f"timed out after {self.timeout:g} s "
                                          "(--timeout); the worker was killed",
                                    seconds=time.perf_counter() - t0))
            except (EOFError, BrokenPipeError, ConnectionResetError):
                code = self.proc.exitcode if self.proc is not None else None
                if self.proc is not None:
                    self.proc.join(5)
                    code = self.proc.exitcode
                why = (f"killed by signal {signal.Signals(-code).name}" if code and code < 0
                       else f"exit status {code}")
                self._kill()
                outs.append(Outcome(error=f"the implementation crashed the worker process "
                                          f"({why})", seconds=time.perf_counter() - t0))
        return outs

    def close(self):
        if self.proc is not None:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(5)
            self._kill()


class Program:
    """An external program speaking resblock-program/1 (spec/PROGRAM_PROTOCOL.md)."""

    def __init__(self, template, timeout):
        from resblock.conformance.program import parse_exec

        parse_exec(template)
        self.template, self.timeout = template, timeout

    def run(self, gcs):
        from resblock.conformance.program import run_program

        batch = [(gc.id, gc.x, gc.params, gc.batch_stats_in) for gc in gcs]
        t0 = time.perf_counter()
        res = run_program(self.template, batch, timeout=self.timeout)
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
