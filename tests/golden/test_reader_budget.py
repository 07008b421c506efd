"""golden/reader.py reads each part of a group (forward, stages, gradients) on first use,
verifies it against its digests, and keeps parts within a byte budget: a part evicted and
read again gives the same arrays, and a reader never touches a part it does not use."""

from __future__ import annotations

import numpy as np

from resblock.golden.reader import GoldenFile


def _all_arrays(gf):
    return {e["id"]: dict(gf.case(e["id"]).arrays) for e in gf.entries}


def test_a_part_is_read_on_first_use_only(smoke_golden):
    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        assert not gf._cache  # opening reads the index, no array
        gc = gf.case(gf.ids[0])
        group = gc.entry["group"]
        assert not gf._cache  # a case is a view: nothing read yet
        gc.x, gc.params, gc.reference("output"), gc.bound("BatchNorm_1/var", _fp32())
        assert set(gf._cache) == {(group, "forward")}
        gc.reference("conv1")
        assert set(gf._cache) == {(group, "forward"), (group, "stages")}
        assert "oracle/stages/conv1" in gc.arrays and "nope" not in gc.arrays


def test_lazy_reads_and_evictions_give_the_same_arrays(smoke_golden, monkeypatch):
    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        eager = _all_arrays(gf)
        assert not gf.hash_problems()
        total = sum(a.nbytes for v in gf._cache.values() for a in v[0].values())
    for budget in (1, total // 2):  # nothing fits (one part at a time); some parts fit
        monkeypatch.setattr(GoldenFile, "cache_bytes", budget)
        with GoldenFile(path) as gf:
            assert not gf.hash_problems()
            for _ in range(2):  # parts are evicted and read (and verified) again
                lazy = _all_arrays(gf)
                assert lazy.keys() == eager.keys()
                for cid, arrays in lazy.items():
                    assert arrays.keys() == eager[cid].keys()
                    for name, a in arrays.items():
                        assert np.array_equal(a, eager[cid][name]), (cid, name)
            held = sum(a.nbytes for v in gf._cache.values() for a in v[0].values())
            assert len(gf._cache) == 1 if budget == 1 else held <= budget


def _fp32():
    from resblock.spec import tolerance

    return tolerance.profile("fp32")


def test_a_closed_file_says_so(smoke_golden):
    import pytest

    from resblock.errors import GoldenFormatError

    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        gc = gf.case(gf.ids[0])
        x = gc.x  # the forward part is read and stays with the case
    assert np.array_equal(gc.x, x)
    with pytest.raises(GoldenFormatError, match="was closed before the stages arrays"):
        gc.reference("conv1")
