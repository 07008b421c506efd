"""Tests for golden/store.py: layout tables, hashes, GoldenWriter, GoldenCase."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest

from resblock.golden import store
from resblock.golden.reader import GoldenFile
from resblock.spec.cases import Case


def test_array_tables():
    assert store.CASE_ARRAYS[0] == "x"
    assert len(store.CASE_ARRAYS) == len(set(store.CASE_ARRAYS)) == (
        1 + 8 + 4 + 1 + 4 + 1 + 4 + 6 + 3 * (1 + 4 + 6) + 3 * (1 + 4))
    assert "oracle/stages/sum" in store.ORACLE_ARRAYS
    assert "oracle/stages/output" not in store.ORACLE_ARRAYS  # that is oracle/y
    # every checked tensor of the oracle has a budget and a conv budget of the same shape
    for name in store.ORACLE_ARRAYS:
        t = name[len("oracle/"):]
        assert f"budget/{t}" in store.BUDGET_ARRAYS and f"budget_conv/{t}" in store.BUDGET_ARRAYS
        assert f"budget_store/{t}" in store.STORE_ARRAYS  # format 6: the fp16/bf16 term
        assert store.expected_shape(f"budget/{t}", 2, 3, 5, 4) == store.expected_shape(
            name, 2, 3, 5, 4)
        assert store.expected_dtype(f"budget/{t}") == np.dtype("<f4")
    assert set(store.STORE_ARRAYS) == {n for n in store.CASE_ARRAYS
                                       if n.startswith(("budget_store/", "sigma_store/"))}
    # a group without budget_store/y (older formats) is read without them
    assert not set(store.group_arrays(("sigma/y",))) & set(store.STORE_ARRAYS)
    assert set(store.STORE_ARRAYS) < set(store.group_arrays(("sigma/y", store.STORE_MARKER,
                                                             store.STAGES_MARKER)))


@pytest.mark.parametrize("name, path", [
    ("output", "y"), ("conv1", "stages/conv1"), ("sum", "stages/sum"),
    ("BatchNorm_1/var", "batch_stats_out/BatchNorm_1/var"),
])
def test_tensor_path(name, path):
    assert store.tensor_path(name) == path


def test_tensor_path_refuses_unknown_names():
    with pytest.raises(KeyError, match="no checked tensor named 'x'"):
        store.tensor_path("x")


@pytest.mark.parametrize("name, shape", [
    ("x", (2, 3, 5, 4)), ("y", (2, 3, 5, 4)), ("oracle/y", (2, 3, 5, 4)),
    ("oracle/stages/relu1", (2, 3, 5, 4)), ("params/Conv_1/kernel", (3, 3, 4, 4)),
    ("params/Conv_0/bias", (4,)), ("params/BatchNorm_1/scale", (4,)),
    ("batch_stats_in/BatchNorm_0/var", (4,)), ("oracle/batch_stats_out/BatchNorm_1/mean", (4,)),
])
def test_expected_shape(name, shape):
    assert store.expected_shape(name, 2, 3, 5, 4) == shape


def test_expected_dtype():
    assert store.expected_dtype("oracle/y") == np.dtype("<f8")
    assert store.expected_dtype("y") == np.dtype("<f4")
    assert store.expected_dtype("params/Conv_0/kernel") == np.dtype("<f4")


def test_case_sha256_by_hand():
    a = np.array([[1.0, 2.0]], np.float32)
    h = hashlib.sha256(b"cid\0")
    h.update(b"a\0<f4\0(1, 2)\0" + a.tobytes())
    assert store.case_sha256("cid", {"a": a}) == h.hexdigest()


def test_case_sha256_sees_every_part():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = store.case_sha256("c", {"a": a, "b": a[0]})
    assert base == store.case_sha256("c", {"b": a[0], "a": a})  # insertion order irrelevant
    assert base == store.case_sha256("c", {"a": a.astype(">f4"), "b": a[0]})  # byte order
    assert base == store.case_sha256("c", {"a": np.asfortranarray(a), "b": a[0]})
    others = [
        store.case_sha256("d", {"a": a, "b": a[0]}),
        store.case_sha256("c", {"a2": a, "b": a[0]}),
        store.case_sha256("c", {"a": a.reshape(3, 2), "b": a[0]}),
        store.case_sha256("c", {"a": a.astype(np.float64), "b": a[0]}),
        store.case_sha256("c", {"a": a + np.float32(1e-6), "b": a[0]}),
    ]
    assert len({base, *others}) == 6


def test_content_sha256_by_hand():
    entries = [{"id": "a", "sha256": "1" * 64}, {"id": "b", "sha256": "2" * 64}]
    want = hashlib.sha256(f"a:{'1' * 64}\nb:{'2' * 64}\n".encode()).hexdigest()
    assert store.content_sha256(entries) == want
    assert store.content_sha256(entries[::-1]) != want


def test_file_layout(smoke_golden):
    path, meta = smoke_golden
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == "6.0.0" == meta["format_version"]
        assert f.attrs["spec_version"] == "7.0.0"
        assert json.loads(f["metadata"][()]) == meta
        assert sorted(f["groups"]) == sorted(g["name"] for g in meta["groups"])
        g = f["groups/n2_h4_w4_f4"]
        assert [s.decode() for s in g["case_ids"][()]] == ["functional-normal-n2-4x4-f4-s0"]
        assert g["x"].shape == (1, 2, 4, 4, 4) and g["x"].dtype == np.dtype("<f4")
        assert g["params/Conv_0/kernel"].shape == (1, 3, 3, 4, 4)
        assert g["oracle/stages/conv2"].dtype == np.dtype("<f8")
        assert g["budget/stages/conv2"].shape == (1, 2, 4, 4, 4)
        assert g["budget_conv/batch_stats_out/BatchNorm_0/var"].shape == (1, 4)
        # no creation timestamps in the objects: files are reproducible byte for byte
        seen = []
        f.visit(seen.append)
        for name in seen:
            info = h5py.h5o.get_info(f[name].id)
            assert (info.ctime, info.mtime) == (0, 0), name
            if isinstance(f[name], h5py.Dataset):  # plain floats and strings only
                assert f[name].dtype.kind in "fO", name


def test_index_entries(smoke_golden):
    _, meta = smoke_golden
    e = next(e for e in meta["cases"] if e["id"] == "seeded-normal-n1-4x4-f4-s0")
    assert {k: e[k] for k in ("family", "inputs", "n", "h", "w", "features", "seed", "group",
                              "row")} == {"family": "seeded", "inputs": "normal", "n": 1, "h": 4,
                                          "w": 4, "features": 4, "seed": 0,
                                          "group": "n1_h4_w4_f4", "row": 0}
    assert e["kappa"] >= 1 and 0 <= e["ref_score"] <= 1
    assert meta["content_sha256"] == store.content_sha256(meta["cases"])
    assert meta["grid"]["preset"] == "smoke" and "rows" in meta["grid"]["definition"]


def test_parts_partition_every_array():
    names = [n for p in store.PARTS.values() for n in p]
    assert len(names) == len(set(names))
    assert set(names) == set(store.CASE_ARRAYS + store.GRAD_ARRAYS + store.INFERENCE_ARRAYS)
    # a forward verdict needs only the forward part: inputs, outputs, their oracle/budgets
    assert {"x", "y", "oracle/y", "budget/y", "budget_conv/batch_stats_out/BatchNorm_1/var",
            "params/Conv_1/kernel"} <= set(store.PARTS["forward"])
    assert not any("stages/" in n or "grad" in n for n in store.PARTS["forward"])
    assert store.group_parts(store.CASE_ARRAYS) == ("forward", "stages")
    assert store.group_parts(store.CASE_ARRAYS + store.INFERENCE_ARRAYS) == (
        "forward", "stages", "inference")
    assert not any(n.startswith(("inference/", "oracle/inference")) or "/inference/" in n
                   for n in store.PARTS["forward"])
    # the inference block's running statistics, output, oracle, budgets and spreads
    assert set(store.group_arrays(("sigma/y", "inference/y"))) - set(
        store.group_arrays(("sigma/y",))) == {
        "inference/y", "oracle/inference/y", "budget/inference/y",
        "budget_conv/inference/y", "sigma/inference/y", "sigma_conv/inference/y",
        "inference/batch_stats/BatchNorm_0/mean", "inference/batch_stats/BatchNorm_0/var",
        "inference/batch_stats/BatchNorm_1/mean", "inference/batch_stats/BatchNorm_1/var"}
    # its storage term (spec 12.4): where the group has it (a 6.0.0 file written before
    # it has not, and a reader recomputes it)
    with_store = ("sigma/y", "inference/y", "budget_store/inference/y")
    assert set(store.group_arrays(with_store)) - set(store.group_arrays(
        ("sigma/y", "inference/y"))) == {"budget_store/inference/y", "sigma_store/inference/y"}
    assert set(store.INFERENCE_STORE_ARRAYS) <= set(store.part_arrays(with_store)["inference"])
    assert not set(store.INFERENCE_STORE_ARRAYS) & set(
        store.part_arrays(("sigma/y", "inference/y"))["inference"])
    assert store.group_parts(store.CASE_ARRAYS + store.GRAD_ARRAYS)[-1] == "grad"


def test_part_sha256_by_hand_and_the_seal_covers_the_parts():
    a = np.arange(3, dtype=np.float32)
    h = hashlib.sha256(b"cid\0part\0forward\0")
    h.update(b"x\0<f4\0(3,)\0" + a.tobytes())
    assert store.part_sha256("cid", "forward", {"x": a}) == h.hexdigest()
    assert store.part_sha256("cid", "stages", {"x": a}) != h.hexdigest()
    rows = {n: np.zeros(1, np.float32) for n in store.CASE_ARRAYS}
    entry = store.seal({"id": "cid", "kappa": 1.0, "group": "g", "row": 0}, rows)
    assert sorted(entry["parts"]) == ["forward", "stages"]
    assert entry["sha256"] == store.case_sha256("cid", {}, store.index_fields(entry))
    rows["oracle/stages/bn1"] = np.ones(1, np.float32)
    again = store.seal(dict(entry), rows)
    assert again["parts"]["forward"] == entry["parts"]["forward"]
    assert again["parts"]["stages"] != entry["parts"]["stages"]
    assert again["sha256"] != entry["sha256"]


def test_golden_case_accessors(smoke_golden):
    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        gc = gf.case("functional-normal-n2-4x4-f4-s0")
        assert gc.id == "functional-normal-n2-4x4-f4-s0"
        assert gc.case == Case("functional", "normal", 2, 4, 4, 4, 0)
        assert gc.kappa == gc.entry["kappa"]
        assert gc.x.shape == (2, 4, 4, 4)
        assert set(gc.params) == {"Conv_0", "Conv_1", "BatchNorm_0", "BatchNorm_1"}
        assert gc.params["Conv_1"]["kernel"].shape == (3, 3, 4, 4)
        assert set(gc.batch_stats_in["BatchNorm_0"]) == {"mean", "var"}
        assert set(gc.tree("oracle/batch_stats_out")) == {"BatchNorm_0", "BatchNorm_1"}


# -- stored bounds: rounded up to BOUND_BITS significant bits (spec 5.4) -----------------

def test_coarse_up_gives_the_smallest_12_bit_float_at_or_above_each_value():
    rng = np.random.default_rng(0)
    a = (rng.lognormal(0.0, 8.0, 20000)).astype(np.float32)  # many binades
    r = store.coarse_up(a)
    assert r.dtype == np.float32 and r is not a
    assert np.all(r >= a)  # still a bound
    low = np.uint32((1 << (24 - store.BOUND_BITS)) - 1)
    assert np.all((r.view(np.uint32) & low) == 0)  # 12 significant bits
    # the smallest such value: one 12-bit step down is below the value
    step_down = (r.view(np.uint32) - (low + np.uint32(1))).view(np.float32)
    moved = r != a
    assert np.all(step_down[moved] < a[moved])
    assert np.all(r <= a * np.float32(1 + store.BOUND_STEP))
    # values already on the grid, zero, inf and NaN stay as they are
    special = np.array([0.0, 1.0, 0.75, np.inf, np.nan, 2.0 ** -137, 2.0 ** -140],
                       np.float32)
    out = store.coarse_up(special)
    assert np.isnan(out[4])
    assert np.array_equal(out[[0, 1, 2, 3, 5]], special[[0, 1, 2, 3, 5]])
    # subnormals keep 12 bits of the bit pattern, not of the value: still bounds
    assert out[6] == np.float32(2.0 ** -137) > special[6]


def test_coarse_up_rounds_a_float32_array_in_place_only_when_asked():
    a = np.array([1.0001, 3.3333], np.float32)
    kept = a.copy()
    r = store.coarse_up(a)
    assert np.array_equal(a, kept) and not np.array_equal(r, kept)
    s = store.coarse_up(a, copy=False)
    assert s is a and np.array_equal(a, r)
    assert np.array_equal(store.coarse_up(a, copy=False), r)  # idempotent
    ro = np.broadcast_to(np.float32(1.0001), (3,))  # not writeable: copied
    assert store.coarse_up(ro, copy=False) is not ro
    f64 = np.array([1.0001])  # another dtype: copied as float32
    assert store.coarse_up(f64, copy=False).dtype == np.float32 and f64[0] == 1.0001


def test_coarse_bounds_touches_budgets_and_spreads_only():
    v = np.array([1.0001], np.float32)
    arrays = {"y": v.copy(), "oracle/y": v.astype(np.float64), "budget/y": v.copy(),
              "sigma_store/output": v.copy(), "budget/grad/x": v.copy()}
    out = store.coarse_bounds(arrays)
    assert out["y"][0] == v[0] and out["oracle/y"][0] == np.float64(v[0])
    for k in ("budget/y", "sigma_store/output", "budget/grad/x"):
        assert out[k][0] > v[0] and store.is_bound(k)
    assert not store.is_bound("oracle/y") and not store.is_bound("y")
