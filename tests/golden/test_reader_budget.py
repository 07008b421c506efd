"""golden/reader.py reads a file within its cache budget while checking it (one pass),
and a larger one group by group, re-reading evicted groups: the arrays are the same."""

from __future__ import annotations

import numpy as np

from resblock.golden.reader import GoldenFile


def _all_arrays(gf):
    return {e["id"]: gf.case(e["id"]).arrays for e in gf.entries}


def test_lazy_reads_and_evictions_give_the_same_arrays(smoke_golden, monkeypatch):
    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        assert gf._cache and not gf._datasets  # read while checked
        eager = _all_arrays(gf)
        assert not gf.hash_problems()
    monkeypatch.setattr(GoldenFile, "cache_bytes", 1)  # nothing fits: one group at a time
    with GoldenFile(path) as gf:
        assert not gf._cache and gf._datasets
        assert not gf.hash_problems()
        for _ in range(2):  # groups are evicted and read again
            lazy = _all_arrays(gf)
            assert lazy.keys() == eager.keys()
            for cid, arrays in lazy.items():
                for name, a in arrays.items():
                    assert np.array_equal(a, eager[cid][name]), (cid, name)
        assert len(gf._cache) == 1
    total = sum(a.nbytes for arrays in eager.values() for a in arrays.values())
    monkeypatch.setattr(GoldenFile, "cache_bytes", total // 2)  # some read on open, not all
    with GoldenFile(path) as gf:
        assert gf._cache and gf._datasets
        for _ in range(2):  # groups read on open are evicted, then reopened and read
            lazy = _all_arrays(gf)
            for cid, arrays in lazy.items():
                for name, a in arrays.items():
                    assert np.array_equal(a, eager[cid][name]), (cid, name)
