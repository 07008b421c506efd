"""`generate --cache-dir`: a warm persistent compilation cache changes no bits.

Fresh processes, as users run it (inside one process JAX's in-memory caches would hide
the persistent one).
"""

from __future__ import annotations

import os
import subprocess
import sys

from resblock.golden.reader import GoldenFile


def test_cached_executables_give_identical_content(smoke_golden, tmp_path):
    full, _ = smoke_golden
    cache = tmp_path / "cache"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    outs = []
    for i in range(2):  # the first run fills the cache, the second reads it
        out = tmp_path / f"c{i}.h5"
        subprocess.run([sys.executable, "-m", "resblock", "generate", "--preset", "smoke",
                        "-o", str(out), "--cache-dir", str(cache), "--stages"], env=env, check=True,
                       capture_output=True)
        outs.append(out)
        if i == 0:
            entries = sorted(p.name for p in cache.iterdir())
            assert entries, "the first run wrote no cache entries"
    assert sorted(p.name for p in cache.iterdir()) == entries  # second run: all hits
    with GoldenFile(outs[1]) as b, GoldenFile(full) as f:
        assert b.metadata["computation"]["compilation_cache"] is True
        assert b.metadata["content_sha256"] == f.metadata["content_sha256"]
