"""Tests for golden/verify.py and ``resblock verify``: intact files pass, modified data
fails its hashes, and a re-hashed reduced-precision golden fails the oracle gate."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from resblock.cli import cli
from resblock.golden.reader import GoldenFile
from resblock.golden.store import content_sha256, seal
from resblock.golden.verify import verify_file

TARGET = "functional-normal-n2-4x4-f4-s0"


def test_intact_file_verifies(smoke_golden):
    path, meta = smoke_golden
    v = verify_file(path)
    assert v.ok and v.problems == []
    file_order = sorted(meta["cases"], key=lambda e: (e["group"], e["row"]))
    assert [c.id for c in v.cases] == [e["id"] for e in file_order]
    for c, e in zip(sorted(v.cases, key=lambda c: c.id),
                    sorted(meta["cases"], key=lambda e: e["id"]), strict=True):
        assert c.ok and c.score == e["ref_score"] and c.kappa == e["kappa"]
        assert 0 <= c.max_abs_dev < 1e-4
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"ok   {path}: 5 cases; worst reference score")
    assert "under profile fp32" in r.output


def test_verbose_lists_every_case(smoke_golden):
    path, meta = smoke_golden
    r = CliRunner().invoke(cli, ["verify", "-v", str(path)])
    assert r.exit_code == 0
    for e in meta["cases"]:
        assert e["id"] in r.output


def test_modified_element_fails_the_hash(golden):
    path, _ = golden
    with h5py.File(path, "r+") as f:
        f["groups/n2_h4_w4_f4/y"][0, 1, 2, 3, 0] += np.float32(0.5)
    v = verify_file(path)
    assert not v.ok
    assert (f"{path}: case {TARGET}: content hash mismatch of its forward arrays (data was "
            "modified)") in v.problems
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 1
    assert f"FAIL {path}: case {TARGET}: content hash mismatch" in r.output


def _rehash(path, meta, rewrite_metadata):
    """Recompute every case hash and the content hash, as a careless regeneration would."""
    with GoldenFile(path) as gf:
        for e in meta["cases"]:
            arrays = gf._read(e["group"], gf._names[e["group"]])  # unverified: resealed
            seal(e, {k: v[e["row"]] for k, v in arrays.items()})
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)


def test_tf32_like_golden_fails_even_with_valid_hashes(golden, rewrite_metadata):
    path, meta = golden
    with h5py.File(path, "r+") as f:
        ds = f["groups/n2_h4_w4_f4/y"]
        ds[0] = ds[0] * np.float32(1.01)  # a 1e-2 relative error, like TF32 convolutions
    _rehash(path, meta, rewrite_metadata)
    with GoldenFile(path) as gf:
        assert gf.hash_problems() == []
    v = verify_file(path)
    assert not v.ok
    bad = [c for c in v.cases if not c.ok]
    assert [c.id for c in bad] == [TARGET] and bad[0].score > 1
    assert len(v.problems) == 1 and "reduced-precision (TF32/bf16)" in v.problems[0]
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 1
    assert f"FAIL {path}: case {TARGET}: stored float32 reference deviates" in r.output
    assert "reduced-precision" in r.output


def test_recorded_score_that_disagrees_is_reported(golden, rewrite_metadata):
    path, meta = golden
    e = next(e for e in meta["cases"] if e["id"] == TARGET)
    e["ref_score"] = e["ref_score"] + 0.25
    rewrite_metadata(path, meta)
    v = verify_file(path)  # the case hash covers the index entry
    assert not v.ok
    assert v.problems[0] == (f"{path}: case {TARGET}: index hash mismatch (its index entry "
                             "was modified)")
    _rehash(path, meta, rewrite_metadata)  # hashes made consistent: the score still differs
    v = verify_file(path)
    assert len(v.problems) == 1 and f"case {TARGET}: recorded ref_score" in v.problems[0]


def test_unreadable_file_is_one_problem_and_no_cases(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    v = verify_file(p)
    assert not v.ok and v.cases == []
    assert len(v.problems) == 1 and str(p) in v.problems[0]


def test_verify_several_files_fails_if_one_fails(smoke_golden, tmp_path):
    path, _ = smoke_golden
    r = CliRunner().invoke(cli, ["verify", str(path), str(tmp_path / "gone.h5")])
    assert r.exit_code == 1
    assert f"ok   {path}" in r.output
    assert f"FAIL {tmp_path / 'gone.h5'}: no such golden file" in r.output


def test_committed_default_golden_passes_its_own_gate():
    from resblock.golden.manifest import committed_paths

    for path in committed_paths():
        v = verify_file(path)
        assert v.problems == [] and v.cases and all(c.ok for c in v.cases), path


def test_inference_part_is_verified():
    """Format 5.1: the inference oracle, budgets and spreads are recomputed from the stored
    inputs and running statistics, and the stored Flax ``inference/y`` judged by them."""
    from resblock.golden.reader import GoldenFile
    from resblock.golden.store import GoldenCase
    from resblock.golden.verify import inference_problem
    from resblock.spec import tolerance

    prof = tolerance.profile("fp32")
    committed = Path(__file__).resolve().parents[2] / "golden" / "default.h5"
    with GoldenFile(committed) as gf:
        gc = next(gf.iter_cases(["functional-normal-n2-4x4-f4-s0"]))
        assert gc.has_inference and inference_problem(gc, prof) is None
        arrays = dict(gc.arrays)
    for name, factor, words in (("budget/inference/y", 2.0, "bounds are inconsistent"),
                                ("oracle/inference/y", 1.001, "data is inconsistent"),
                                ("inference/y", 1.001, "deviates from the float64")):
        bad = dict(arrays, **{name: arrays[name] * factor})
        assert words in inference_problem(GoldenCase(gc.case, gc.entry, bad), prof)
