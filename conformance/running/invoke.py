"""Call an implementation on golden cases: in-process, in a worker process, or a program.

Every invoker turns a list of cases into one :class:`Outcome` per case; an exception,
a hang (``--timeout``) or a crashing native implementation becomes that case's error,
never the runner's. This module holds what every invoker shares (:func:`case_inputs`,
:func:`call_once` on read-only copies, :func:`clean_text`) and the two light invokers,
:class:`InProcess` and :class:`Program` (``--exec``); the isolated worker process,
``resblock check``'s default, is :class:`~resblock.conformance.running.worker.Worker`.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

import numpy as np

from resblock.conformance.running.adapters import frozen_copy, frozen_tree, to_user_layout


@dataclass
class Outcome:
    result: object = None
    error: str | None = None
    mutated: tuple = ()
    seconds: float = 0.0


def case_inputs(gc, api: str) -> dict:
    """The picklable inputs of a golden case for ``api`` (NHWC, kit layout). Only the
    backward reads the cotangent (and with it the gradient part of the file); inference
    hands over the running statistics of the inference part as ``batch_stats``."""
    stats = gc.running_stats if api == "inference" else gc.batch_stats_in
    out = {"x": gc.x, "params": gc.params, "stats": stats,
           "seed": gc.case.seed, "features": gc.case.features}
    if api == "backward":
        out["y_bar"] = gc.y_bar
    return out


def _plain(obj):
    """Arrays of any framework -> NumPy; containers kept (the worker sends no others)."""
    from resblock.conformance.running.adapters import as_numpy

    if isinstance(obj, dict) or hasattr(obj, "unfreeze"):
        d = obj.unfreeze() if hasattr(obj, "unfreeze") else obj
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(obj, (tuple, list)):  # a namedtuple or list subclass becomes plain
        items = [_plain(v) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
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


class Program:
    """An external program speaking resblock-program/1 (spec/PROGRAM_PROTOCOL.md)."""

    def __init__(self, template, timeout, api: str = "functional"):
        from resblock.conformance.running.program import parse_exec

        parse_exec(template)
        self.template, self.timeout, self.api = template, timeout, api

    def run(self, gcs):
        from resblock.conformance.running.program import run_program

        backward = self.api == "backward"
        inference = self.api == "inference"
        batch = [(gc.id, gc.x, gc.params, gc.running_stats if inference else gc.batch_stats_in)
                 + ((gc.y_bar,) if backward else ()) for gc in gcs]
        t0 = time.perf_counter()
        res = run_program(self.template, batch, timeout=self.timeout, backward=backward,
                          inference=inference)
        per = (time.perf_counter() - t0) / max(1, len(gcs))
        outs = []
        for gc in gcs:
            r = res.get(gc.id, "the program produced no result for this case")
            if isinstance(r, str):
                outs.append(Outcome(error=r, seconds=per))
            elif inference:
                outs.append(Outcome(result=r[0], seconds=per))
            else:
                outs.append(Outcome(result=(r[0], r[1]), seconds=per))
        return outs

    def close(self):
        pass
