"""Format 5 (golden/store.py, writer.py, reader.py): the stage data is optional and
recomputed from the inputs when absent; large arrays are stored compressed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from resblock.conformance.judging.compare import first_diverging_stage
from resblock.errors import GoldenFormatError
from resblock.generator.run import generate
from resblock.golden import store
from resblock.golden.reader import GoldenFile
from resblock.golden.safety import MAX_COMPRESSION, checked_dataset
from resblock.golden.verify import verify_file
from resblock.golden.writer import _create
from resblock.spec import tolerance
from resblock.spec.cases import Case

CASES = [Case("functional", "normal", 2, 16, 16, 8, 0), Case("stress", "zeroinit", 2, 16, 16, 8, 0)]
STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum")
FP32 = tolerance.profile("fp32")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same two cases without (the default) and with the stage data; arrays of 4 KiB
    and more compressed (the threshold lowered so that small cases exercise it)."""
    d = tmp_path_factory.mktemp("compact")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        mp.setattr(store, "COMPRESS_MIN_BYTES", 4096)
        generate(CASES, d / "lean.h5", jobs=1)
        generate(CASES, d / "full.h5", jobs=1, stages=True)
    return d / "lean.h5", d / "full.h5"


def test_storage_options_by_kind():
    assert store.storage_options("x", (2, 16, 16, 8), np.float32) == {}  # 16 KiB
    big = (32, 56, 56, 64)
    opts = store.storage_options("x", big, np.float32)
    assert opts == {"chunks": (1, 1, 56, 56, 64), "compression": "gzip",
                    "compression_opts": store.DEFLATE_LEVEL, "shuffle": True}
    assert store.storage_options("oracle/y", big, np.float64)["shuffle"] is False
    assert store.storage_options("y", big, np.float32)["shuffle"] is False
    assert store.storage_options("budget/y", big, np.float32)["shuffle"] is True
    assert store.storage_options("params/Conv_0/kernel", (3, 3, 512, 512), np.float32)[
        "chunks"] == (1, 3, 3, 512, 512)


def test_a_file_without_stage_data_holds_and_seals_the_rest(pair):
    lean, full = pair
    with h5py.File(lean, "r") as f:
        g = f["groups/n2_h16_w16_f8"]
        assert "stages" not in g["oracle"] and "stages" not in g["budget"]
        assert g["x"].compression == "gzip" and g["x"].shuffle
        assert g["y"].compression == "gzip" and not g["y"].shuffle
        assert g["x"].chunks == (1, 1, 16, 16, 8)
        assert g["params/Conv_0/bias"].compression is None  # 32 bytes: contiguous
    with GoldenFile(lean) as gl, GoldenFile(full) as gf:
        assert gl.metadata["format_version"] == "6.0.0"
        assert gl.hash_problems() == [] and gf.hash_problems() == []
        for cid in gl.ids:
            a, b = gl.case(cid), gf.case(cid)
            assert sorted(a.entry["parts"]) == ["forward"]
            assert sorted(b.entry["parts"]) == ["forward", "stages"]
            assert a.entry["parts"]["forward"] == b.entry["parts"]["forward"]
            assert not a.has_stages and b.has_stages
            assert set(b.arrays) - set(a.arrays) == set(store.STAGE_ARRAYS)


def test_stage_data_is_recomputed_bit_for_bit(pair):
    lean, full = pair
    with GoldenFile(lean) as gl, GoldenFile(full) as gf:
        for cid in gl.ids:
            a, b = gl.case(cid), gf.case(cid)
            for s in STAGES:
                np.testing.assert_array_equal(a.reference(s), b.reference(s), err_msg=s)
                np.testing.assert_array_equal(a.bound(s, FP32), b.bound(s, FP32), err_msg=s)
            assert "stages" in a.derived and not b.derived  # computed once, kept


def test_the_first_diverging_stage_is_named_without_stage_data(pair):
    lean, _ = pair
    with GoldenFile(lean) as gl:
        gc = gl.case(CASES[0].id)
        inter = {s: gc.reference(s).astype(np.float32) for s in STAGES}
        assert first_diverging_stage(gc, inter, FP32) is None
        inter["bn2"] = inter["bn2"] + 1.0
        assert first_diverging_stage(gc, inter, FP32) == "bn2"


def test_stage_data_is_not_recomputed_for_an_oracle_that_does_not_fit_the_inputs(pair):
    lean, _ = pair
    with GoldenFile(lean) as gl:
        gc = gl.case(CASES[0].id).detached()
    arrays = dict(gc.arrays)
    arrays["oracle/y"] = arrays["oracle/y"] * (1 + 1e-6)
    forged = store.GoldenCase(case=gc.case, entry=gc.entry, arrays=arrays)
    with pytest.raises(GoldenFormatError, match="differs from the stored oracle/y"):
        forged.reference("conv1")
    assert forged.reference("output") is arrays["oracle/y"]  # the verdict needs no stages


def test_verify_accepts_a_file_without_stage_data(pair):
    lean, _ = pair
    verdict = verify_file(lean, derive=False)
    assert verdict.ok, verdict


def test_an_array_that_compresses_like_a_bomb_is_stored_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "COMPRESS_MIN_BYTES", 1024)
    path = tmp_path / "f.h5"
    zeros = np.zeros((1, 2, 32, 32, 8), np.float32)  # a zero-init residual's bn2 stage
    noise = np.random.default_rng(0).standard_normal(zeros.shape).astype(np.float32)
    with h5py.File(path, "w") as f:
        _create(f, "budget/stages/bn2", zeros)
        _create(f, "x", noise)
    with h5py.File(path, "r") as f:
        assert f["budget/stages/bn2"].compression is None
        assert f["x"].compression == "gzip"
        size = path.stat().st_size
        for name in ("budget/stages/bn2", "x"):  # both pass the reader's checks
            checked_dataset(f, path, size, name, zeros.shape, h5py.h5t.IEEE_F32LE)
        np.testing.assert_array_equal(f["x"][()], noise)


def test_a_forged_compression_bomb_is_still_refused(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("z", data=np.zeros((1, 64, 64, 64), np.float32),
                         chunks=(1, 64, 64, 64), compression="gzip", compression_opts=9)
        assert f["z"].nbytes > MAX_COMPRESSION * f["z"].id.get_storage_size()
    with h5py.File(path, "r") as f, pytest.raises(GoldenFormatError, match="forged"):
        checked_dataset(f, path, path.stat().st_size, "z", (1, 64, 64, 64),
                        h5py.h5t.IEEE_F32LE)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isal", [True, False])
def test_chunks_compressed_here_are_hdf5s_own(tmp_path, monkeypatch, shuffle, dtype, isal):
    """The writer's own chunk compression (threads, ``write_direct_chunk``) stores, with
    zlib, the bytes HDF5's shuffle and deflate filters store; with ISA-L (when
    installed) a stream any reader inflates; either reads back the same values."""
    import sys
    import zlib

    from resblock.golden import writer
    from resblock.golden.writer import deflate_chunks

    if isal:
        pytest.importorskip("isal")
    else:
        monkeypatch.setitem(sys.modules, "isal", None)  # import isal fails: zlib

    a = np.random.default_rng(0).standard_normal((1, 3, 5, 6, 4)).astype(dtype)
    a[0, 1] = np.maximum(a[0, 1], 0)
    opts = {"chunks": (1, 1, 5, 6, 4), "compression": "gzip", "compression_opts": 1,
            "shuffle": shuffle}
    with h5py.File(tmp_path / "f.h5", "w") as f:
        theirs = f.create_dataset("theirs", data=a, **opts)
        ours = f.create_dataset("ours", shape=a.shape, dtype=a.dtype, **opts)
        for offset, data in deflate_chunks(a, opts["chunks"], 1, shuffle):
            ours.id.write_direct_chunk(offset, data)
        for k in range(3):
            mine = ours.id.read_direct_chunk((0, k, 0, 0, 0))
            hdf5 = theirs.id.read_direct_chunk((0, k, 0, 0, 0))
            assert mine == hdf5 or (isal and zlib.decompress(mine[1]) ==
                                    zlib.decompress(hdf5[1]))
        np.testing.assert_array_equal(ours[...], a)
    assert writer.deflater(1).func.__module__.startswith("isal") == isal
