"""What the worker process sends back: arrays and plain structures, never code.

The checker must not run anything an implementation chose, so a worker's reply is not a
pickle (unpickling calls whatever ``__reduce__`` names: ``os._exit``, ``os.system``). A
reply is one JSON header, at most :data:`HEADER_MAX_BYTES`, followed by the raw bytes of
each array it declares; both travel in ``multiprocessing.Connection``'s framing (a 4-byte
big-endian length, or ``-1`` and an 8-byte one). The header holds

- ``kind`` (``ready``, ``load_error``, ``error`` or ``ok``), ``text``, ``mutated``,
  ``seconds``;
- ``result``: a tree of nodes ``{"t": "tuple"|"list", "items": [...]}``,
  ``{"t": "dict", "items": [[key, node], ...]}`` (string keys), ``{"t": "none"}``,
  ``{"t": "array", "i": index}`` and ``{"t": "opaque", "type": name, "reason": text}``
  (anything else the implementation returned, described, not sent);
- ``arrays``: ``[[dtype, shape], ...]``, plain numeric dtypes only.

The worker converts torch and JAX arrays to NumPy before encoding (:func:`encode`). The
checker (:func:`receive`) reads the length of every frame before its bytes and refuses,
unread, a header or an array larger than the case's limits; whatever does not parse or
does not match what the header declares is a :class:`WireError` with a one-line message.
Nothing here imports torch or JAX.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time

import numpy as np

HEADER_MAX_BYTES = 1 << 20
MAX_DEPTH = 16  # nesting of the result tree (the contract needs 3)
MAX_NODES = 4096
MAX_ARRAYS = 256
DTYPES = {np.dtype(t).str: np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)}
KINDS = ("ready", "load_error", "error", "ok")


class WireError(Exception):
    """The worker's reply is malformed or too large (one line, for the case's error)."""


class Opaque:
    """Something the implementation returned that is not an array or a plain container:
    described by the worker (its type's name, why it could not be converted), not sent."""

    def __init__(self, type_name: str, reason: str | None = None):
        self.type_name, self.reason = type_name, reason

    def __repr__(self):
        return f"<{self.type_name}>"


# -- worker side --------------------------------------------------------------------------

def encode(kind: str, text: str | None = None, outcome=None) -> tuple[bytes, list]:
    """The header and the arrays of one reply (``outcome``: an invoke.Outcome)."""
    arrays: list[np.ndarray] = []
    head = {"kind": kind, "text": text}
    if outcome is not None:
        count = [0]
        head.update(text=outcome.error, mutated=[str(m) for m in outcome.mutated],
                    seconds=float(outcome.seconds),
                    result=_node(outcome.result, arrays, 0, count))
    head["arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
    return json.dumps(head).encode(), arrays


def _node(obj, arrays, depth, count):
    from resblock.conformance.running.adapters import as_numpy, conversion_failure

    count[0] += 1
    if count[0] > MAX_NODES or depth >= MAX_DEPTH:
        return {"t": "opaque", "type": type(obj).__name__,
                "reason": "the result is nested too deeply or holds too many items"}
    if obj is None:
        return {"t": "none"}
    if hasattr(obj, "unfreeze") and not isinstance(obj, np.ndarray):  # Flax FrozenDict
        try:
            obj = obj.unfreeze()
        except Exception:  # noqa: BLE001 - left opaque below
            pass
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            return {"t": "opaque", "type": type(obj).__name__,
                    "reason": "a dict whose keys are not all strings"}
        return {"t": "dict",
                "items": [[k, _node(v, arrays, depth + 1, count)] for k, v in obj.items()]}
    if isinstance(obj, (tuple, list)):
        return {"t": "tuple" if isinstance(obj, tuple) else "list",
                "items": [_node(v, arrays, depth + 1, count) for v in obj]}
    try:
        a = as_numpy(obj, "value") if not isinstance(obj, np.ndarray) else obj
    except Exception as e:  # noqa: BLE001 - the object's conversion may raise anything
        return {"t": "opaque", "type": type(obj).__name__,
                "reason": conversion_failure(obj, e)}
    if a.dtype.str not in DTYPES:
        return {"t": "opaque", "type": type(obj).__name__,
                "reason": f"an array of dtype {a.dtype}; the contract is float32 "
                "(cast with .astype(np.float32) or .float())"}
    if len(arrays) >= MAX_ARRAYS:
        return {"t": "opaque", "type": type(obj).__name__,
                "reason": "the result holds too many arrays"}
    arrays.append(a if a.flags.c_contiguous else np.array(a, order="C"))  # keeps 0-d
    return {"t": "array", "i": len(arrays) - 1}


def send(conn, kind: str, text: str | None = None, outcome=None) -> None:
    send_encoded(conn, *encode(kind, text, outcome))


def send_encoded(conn, head: bytes, arrays: list) -> None:
    conn.send_bytes(head)
    for a in arrays:
        conn.send_bytes(memoryview(a.reshape(-1)).cast("B") if a.size else b"")


# -- checker side -------------------------------------------------------------------------

class Limits:
    """The largest reply the checker reads: per array and in all (bytes)."""

    def __init__(self, array_bytes: int = 0, total_bytes: int = 0):
        self.array_bytes, self.total_bytes = array_bytes, total_bytes


class _Reader:
    """Reads frames from a connection's descriptor before a deadline, into buffers sized
    from the frame's length (checked first)."""

    def __init__(self, conn, deadline, alive, poll_s):
        self.fd, self.deadline, self.alive, self.poll_s = conn.fileno(), deadline, alive, \
            poll_s

    def _wait(self):
        while True:
            left = self.poll_s if self.deadline is None else \
                min(self.poll_s, self.deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                return
            if not self.alive():
                raise EOFError

    def read_into(self, buf: memoryview) -> None:
        pos = 0
        while pos < len(buf):
            self._wait()
            k = os.readv(self.fd, [buf[pos:]])
            if k == 0:
                raise EOFError
            pos += k

    def frame_length(self) -> int:
        b = bytearray(4)
        self.read_into(memoryview(b))
        (n,) = struct.unpack("!i", b)
        if n == -1:
            b = bytearray(8)
            self.read_into(memoryview(b))
            (n,) = struct.unpack("!Q", b)
        if n < 0:
            raise WireError(f"the worker's reply has a negative length ({n})")
        return n


def receive(conn, limits: Limits, deadline=None, alive=lambda: True, poll_s=0.25) -> dict:
    """One reply of the worker, decoded: ``{"kind", "text", "mutated", "seconds",
    "result"}`` with NumPy arrays in ``result``.

    Raises:
      WireError: the reply is malformed, or declares more bytes than ``limits`` allow
        (refused before they are read).
      EOFError: the worker closed the connection or died.
      TimeoutError: ``deadline`` (``time.monotonic()``) passed.
    """
    rd = _Reader(conn, deadline, alive, poll_s)
    n = rd.frame_length()
    if n > HEADER_MAX_BYTES:
        raise WireError(f"the worker's reply header declares {n} bytes (at most "
                        f"{HEADER_MAX_BYTES}); refused unread")
    raw = bytearray(n)
    rd.read_into(memoryview(raw))
    try:
        head = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise WireError(f"the worker's reply is not a valid header "
                        f"({type(e).__name__})") from None
    specs = _header(head, limits)
    arrays = []
    for dtype, shape, nbytes in specs:
        got = rd.frame_length()
        if got != nbytes:
            raise WireError(f"the worker sent {got} bytes for an array declared as "
                            f"{dtype} {tuple(shape)} ({nbytes} bytes)")
        a = np.empty(shape, dtype)
        if nbytes:
            rd.read_into(memoryview(a.reshape(-1)).cast("B"))
        arrays.append(a)
    used: set = set()
    result = _decode(head.get("result", {"t": "none"}), arrays, used, 0)
    if len(used) != len(arrays):
        raise WireError("the worker's reply declares arrays its result does not use")
    return {"kind": head["kind"], "text": head.get("text"),
            "mutated": tuple(head.get("mutated", ())), "seconds": head.get("seconds", 0.0),
            "result": result}


def _header(head, limits: Limits) -> list:
    """Check a header's fields; the (dtype, shape, bytes) of each declared array."""
    if not isinstance(head, dict) or head.get("kind") not in KINDS:
        raise WireError("the worker's reply header is not one the kit writes")
    for key, types in (("text", (str, type(None))), ("seconds", (int, float)),
                       ("mutated", (list,)), ("arrays", (list,))):
        if key in head and not isinstance(head[key], types):
            raise WireError(f"the worker's reply header has a malformed {key!r}")
    if "seconds" in head and not math.isfinite(head["seconds"]):
        raise WireError("the worker's reply header has a malformed 'seconds'")
    if not all(isinstance(m, str) for m in head.get("mutated", [])):
        raise WireError("the worker's reply header has a malformed 'mutated'")
    declared = head.get("arrays", [])
    if len(declared) > MAX_ARRAYS:
        raise WireError(f"the result holds {len(declared)} arrays (at most {MAX_ARRAYS})")
    specs, total = [], 0
    for d in declared:
        if not (isinstance(d, list) and len(d) == 2 and d[0] in DTYPES
                and isinstance(d[1], list) and len(d[1]) <= 32
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62
                        for s in d[1])):
            raise WireError("the worker's reply declares a malformed array")
        dtype, shape = DTYPES[d[0]], tuple(d[1])
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes > limits.array_bytes:
            raise WireError(f"the implementation returned an array of {nbytes} bytes "
                            f"({dtype} {shape}); no array of this case's result needs more "
                            f"than {limits.array_bytes}: refused unread")
        total += nbytes
        if total > limits.total_bytes:
            raise WireError(f"the implementation's result holds more than "
                            f"{limits.total_bytes} bytes of arrays, more than this case's "
                            "result needs: refused unread")
        specs.append((dtype, shape, nbytes))
    return specs


def _decode(node, arrays, used, depth):
    if depth > MAX_DEPTH + 1 or not isinstance(node, dict):
        raise WireError("the worker's reply has a malformed result tree")
    t = node.get("t")
    if t == "none":
        return None
    if t == "array":
        i = node.get("i")
        if not isinstance(i, int) or not 0 <= i < len(arrays) or i in used:
            raise WireError("the worker's reply has a malformed result tree")
        used.add(i)
        return arrays[i]
    if t == "opaque":
        name, reason = node.get("type"), node.get("reason")
        if not isinstance(name, str) or not isinstance(reason, (str, type(None))):
            raise WireError("the worker's reply has a malformed result tree")
        return Opaque(name[:200], None if reason is None else reason[:2000])
    items = node.get("items")
    if t in ("tuple", "list") and isinstance(items, list):
        out = [_decode(v, arrays, used, depth + 1) for v in items]
        return tuple(out) if t == "tuple" else out
    if t == "dict" and isinstance(items, list):
        d = {}
        for kv in items:
            if not (isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], str)):
                raise WireError("the worker's reply has a malformed result tree")
            d[kv[0]] = _decode(kv[1], arrays, used, depth + 1)
        return d
    raise WireError("the worker's reply has a malformed result tree")
