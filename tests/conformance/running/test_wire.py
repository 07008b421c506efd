"""Tests of conformance/running/wire.py: the worker's replies carry arrays and plain
structures only, and the checker reads no more than a case's limits allow."""

from __future__ import annotations

import json
import multiprocessing as mp
import struct

import numpy as np
import pytest

from resblock.conformance.running import wire
from resblock.conformance.running.invoke import Outcome

BIG = wire.Limits(1 << 20, 1 << 22)


def roundtrip(kind="ok", text=None, outcome=None, limits=BIG):
    a, b = mp.Pipe()
    try:
        wire.send(a, kind, text, outcome)
        return wire.receive(b, limits, deadline=None)
    finally:
        a.close()
        b.close()


def raw(frames, limits=BIG):
    a, b = mp.Pipe()
    try:
        for f in frames:
            a.send_bytes(f)
        return wire.receive(b, limits, deadline=None)
    finally:
        a.close()
        b.close()


class Mine:
    def __reduce__(self):
        import os
        return (os._exit, (0,))


def test_arrays_and_plain_structures_come_back_exactly():
    y = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    stats = {"BatchNorm_0": {"mean": np.float64(1.5), "var": [1.0, 2.0]}}
    out = Outcome(result=(y, stats, None, [np.zeros(0, np.int8), True]),
                  mutated=("x",), seconds=0.25)
    m = roundtrip(outcome=out)
    y2, s2, none, rest = m["result"]
    assert m["kind"] == "ok" and m["mutated"] == ("x",) and m["seconds"] == 0.25
    assert y2.dtype == np.float32 and np.array_equal(y2, y) and y2.flags.writeable
    assert s2["BatchNorm_0"]["mean"].dtype == np.float64 and s2["BatchNorm_0"]["mean"] == 1.5
    assert [float(v) for v in s2["BatchNorm_0"]["var"]] == [1.0, 2.0] and none is None
    assert rest[0].shape == (0,) and rest[1].dtype == np.bool_ and isinstance(rest, list)


def test_objects_are_described_not_sent():
    out = Outcome(result=(Mine(), {1: 2}, np.array(["a"]), np.zeros(2, ">f4")))
    mine, keys, text, big_endian = roundtrip(outcome=out)["result"]
    assert isinstance(mine, wire.Opaque) and mine.type_name == "Mine" and mine.reason is None
    assert "keys are not all strings" in keys.reason
    assert "dtype <U1" in text.reason and "dtype >f4" in big_endian.reason


def test_deep_nesting_is_cut_by_the_worker():
    deep = []
    for _ in range(100):
        deep = [deep]
    node = roundtrip(outcome=Outcome(result=deep))["result"]
    for _ in range(wire.MAX_DEPTH):
        node = node[0]
    assert isinstance(node, wire.Opaque) and "nested too deeply" in node.reason


def test_an_oversized_array_is_refused_from_its_declared_size():
    head = json.dumps({"kind": "ok", "result": {"t": "array", "i": 0},
                       "arrays": [["<f4", [1 << 28]]]}).encode()
    with pytest.raises(wire.WireError, match=r"array of 1073741824 bytes .*refused unread"):
        raw([head])  # no payload sent: it is never read
    head = json.dumps({"kind": "ok", "result": {"t": "list", "items": [
        {"t": "array", "i": i} for i in range(5)]},
        "arrays": [["<f8", [1 << 17]]] * 5}).encode()
    with pytest.raises(wire.WireError, match="more than 4194304 bytes of arrays"):
        raw([head])


@pytest.mark.parametrize("frames, match", [
    ([b"\x80\x04garbage"], "not a valid header"),
    ([b"[" * 100000 + b"]" * 100000], "not a valid header"),
    ([json.dumps({"kind": "exec"}).encode()], "not one the kit writes"),
    ([json.dumps({"kind": "ok", "arrays": [["|O", [1]]]}).encode()], "malformed array"),
    ([json.dumps({"kind": "ok", "seconds": "inf"}).encode()], "malformed 'seconds'"),
    ([json.dumps({"kind": "ok", "result": {"t": "array", "i": 0},
                  "arrays": [["<f4", [2]]]}).encode(), b"\0" * 4], "sent 4 bytes"),
    ([json.dumps({"kind": "ok", "result": {"t": "none"},
                  "arrays": [["<f4", [1]]]}).encode(), b"\0" * 4], "does not use"),
    ([json.dumps({"kind": "ok", "result": {"t": "module", "name": "os"}}).encode()],
     "malformed result tree"),
])
def test_malformed_replies_are_one_line_errors(frames, match):
    with pytest.raises(wire.WireError, match=match) as e:
        raw(frames)
    assert "\n" not in str(e.value)


def test_an_oversized_header_is_refused_unread():
    a, b = mp.Pipe()
    a._send(struct.pack("!i", wire.HEADER_MAX_BYTES + 1))
    with pytest.raises(wire.WireError, match="refused unread"):
        wire.receive(b, BIG)


def test_a_silent_worker_times_out_and_a_dead_one_is_eof():
    import time

    a, b = mp.Pipe()
    with pytest.raises(TimeoutError):
        wire.receive(b, BIG, deadline=time.monotonic() + 0.2, poll_s=0.05)
    with pytest.raises(EOFError):
        wire.receive(b, BIG, alive=lambda: False, poll_s=0.05)
    a.close()
    with pytest.raises(EOFError):
        wire.receive(b, BIG)
