"""`resblock generate --distributed`: several local CPU processes, one jax.distributed job."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from resblock.golden.reader import GoldenFile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(out, port, env, cwd=None):
    """Processes 0 and 1 of a two-process `generate --distributed` of the smoke preset."""
    return [subprocess.Popen(
        [sys.executable, "-m", "resblock", "generate", "--preset", "smoke", "-o", str(out),
         "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(i), "--stages"], env=env, cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]


def test_two_local_processes_shard_and_merge(smoke_golden, tmp_path):
    full, _ = smoke_golden
    out = tmp_path / "dist.h5"
    port = _free_port()
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", JAX_PLATFORMS="cpu")
    procs = _start_pair(out, port, env)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
        assert m.metadata["grid"]["shard"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5"]  # shards removed


def test_a_dead_peer_ends_the_job_in_seconds(tmp_path):
    # Process 1 is killed (SIGKILL: no chance to say so); process 0 sees its heartbeat
    # stop and fails in one line instead of waiting an hour, leaving no shard behind.
    import signal
    import time

    out = tmp_path / "dist.h5"
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", RESBLOCK_PEER_TIMEOUT="3")
    procs = _start_pair(out, port, env, cwd=tmp_path)
    try:
        beat = tmp_path / "dist.h5.alive-2-of-2"
        deadline = time.monotonic() + 120
        while not beat.exists():
            assert time.monotonic() < deadline and procs[1].poll() is None
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)
        output = procs[0].communicate(timeout=120)[0]
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 2, output
    assert "--distributed: process 1 stopped: no heartbeat for 3 s" in output
    assert not out.exists()
