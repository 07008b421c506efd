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


def test_two_local_processes_shard_and_merge(smoke_golden, tmp_path):
    full, _ = smoke_golden
    out = tmp_path / "dist.h5"
    port = _free_port()
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "resblock", "generate", "--preset", "smoke", "-o", str(out),
         "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
        assert m.metadata["grid"]["shard"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5"]  # shards removed
