"""Tests for golden/reader.py: GoldenFile validates on open and names the file in every
problem; damaged, truncated, edited and foreign files are refused."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from resblock.errors import GoldenFormatError
from resblock.golden.reader import GoldenFile, open_golden
from resblock.golden.store import CASE_ARRAYS
from resblock.spec.cases import Case
from resblock.spec.derivation import derive_variables, derive_x


def test_round_trip(smoke_golden):
    path, meta = smoke_golden
    with open_golden(path) as gf:
        assert gf.metadata == meta
        assert gf.ids == [e["id"] for e in meta["cases"]]
        assert gf.hash_problems() == []
        seen = [gc.id for gc in gf.iter_cases()]
        assert sorted(seen) == sorted(gf.ids)
        groups = [gf.entry(i)["group"] for i in seen]
        assert groups == sorted(groups)  # file order: group by group
        only = [gc.id for gc in gf.iter_cases(ids=["stress-normal-n1-1x1-f4-s0"])]
        assert only == ["stress-normal-n1-1x1-f4-s0"]
        for gc in gf.iter_cases():
            assert set(gc.arrays) == set(CASE_ARRAYS)
            assert gc.arrays["x"].shape == gc.case.x_shape
    with h5py.File(path, "r") as f:
        for e in meta["cases"]:
            x = f[f"groups/{e['group']}/x"][e["row"]]
            with GoldenFile(path) as gf:
                np.testing.assert_array_equal(gf.case(e["id"]).x, x)


def test_unknown_case_id_names_file_and_remedy(smoke_golden):
    path, _ = smoke_golden
    with GoldenFile(path) as gf:
        with pytest.raises(GoldenFormatError, match=f"{path}: no case 'seeded-normal-n1-9x9"):
            gf.case("seeded-normal-n1-9x9-f4-s0")
        with pytest.raises(GoldenFormatError, match="resblock list"):
            gf.entry("nope")


def _open_fails(path, match):
    with pytest.raises(GoldenFormatError) as e:
        GoldenFile(path)
    msg = str(e.value)
    assert str(path) in msg
    assert match in msg, msg
    return msg


def test_missing_file(tmp_path):
    _open_fails(tmp_path / "absent.h5", "no such golden file")


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("this is not HDF5\n")
    _open_fails(p, "not a readable HDF5 file")


def test_truncated_file(golden):
    path, _ = golden
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _open_fails(path, "truncated or corrupt")


def test_damaged_hdf5_structure_is_a_format_error(golden):
    """A damaged B-tree inside an otherwise readable file: GoldenFormatError naming the
    file (not a bare h5py RuntimeError), so `resblock verify` prints a FAIL line."""
    path, _ = golden
    data = bytearray(path.read_bytes())
    i = data.find(b"TREE")  # signature of the first B-tree node (the root group's)
    assert i > 0
    data[i:i + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    _open_fails(path, str(path))


def test_hdf5_without_metadata(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    _open_fails(p, "not a resblock golden file")


def test_metadata_not_json(golden, rewrite_metadata):
    path, _ = golden
    rewrite_metadata(path, "{not json")
    _open_fails(path, "/metadata is not valid JSON")


def test_metadata_with_unknown_field(golden, rewrite_metadata):
    path, meta = golden
    meta["comment"] = "edited by hand"
    rewrite_metadata(path, meta)
    msg = _open_fails(path, "does not validate against schema 'golden-metadata'")
    assert "comment" in msg


def test_metadata_with_bad_hash(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"][0]["sha256"] = "XYZ"
    rewrite_metadata(path, meta)
    _open_fails(path, "at cases/0/sha256")


def test_newer_format_version(golden, rewrite_metadata):
    path, meta = golden
    meta["format_version"] = "7.0.0"
    rewrite_metadata(path, meta)
    _open_fails(path, "format version 7.0.0, but this kit reads formats 2.x, 3.x, 4.x, 5.x, 6.x")


def test_format_1_files_get_a_regeneration_message(golden, rewrite_metadata):
    path, meta = golden
    meta["format_version"] = "1.0.0"
    rewrite_metadata(path, meta)
    _open_fails(path, "predates the per-element error model")


def test_entry_disagreeing_with_its_id(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"][0]["seed"] = 99
    rewrite_metadata(path, meta)
    _open_fails(path, "disagrees with the fields its id encodes")


def test_entry_pointing_past_its_group(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"][0]["row"] = 5
    rewrite_metadata(path, meta)
    _open_fails(path, "points to a missing group/row")


def test_duplicate_index_entry(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"].append(dict(meta["cases"][0]))
    rewrite_metadata(path, meta)
    _open_fails(path, "duplicate case id")


def test_missing_group_and_dataset(golden, tmp_path):
    path, meta = golden
    second = tmp_path / "second.h5"
    shutil.copyfile(path, second)
    with h5py.File(path, "r+") as f:
        del f["groups/n1_h1_w1_f4"]
    _open_fails(path, "group /groups/n1_h1_w1_f4 listed in metadata is missing")
    with h5py.File(second, "r+") as f:
        del f["groups/n1_h1_w1_f4/oracle/stages/bn2"]
    _open_fails(second, "dataset /groups/n1_h1_w1_f4/oracle/stages/bn2 is missing")


def test_wrong_dtype(golden):
    path, _ = golden
    with h5py.File(path, "r+") as f:
        x = f["groups/n1_h4_w4_f4/x"][()]
        del f["groups/n1_h4_w4_f4/x"]
        f["groups/n1_h4_w4_f4/x"] = x.astype(np.float64)
    with GoldenFile(path) as gf:  # the dataset is checked when its part is first read
        gf.part("n1_h4_w4_f4", "stages")
        with pytest.raises(GoldenFormatError,
                           match=r"/groups/n1_h4_w4_f4/x has shape \(1, 1, 4, 4, 4\) dtype "
                                 "float64; expected"):
            _ = gf.case(gf._by_group["n1_h4_w4_f4"][0]["id"]).x


def test_a_forged_group_shape_is_refused_on_open(golden, rewrite_metadata):
    path, meta = golden
    meta["groups"][0].update(h=20000, w=20000)
    rewrite_metadata(path, meta)
    _open_fails(path, "is listed with the shape of")


def test_modified_element_is_a_hash_problem(golden):
    path, _ = golden
    with h5py.File(path, "r+") as f:
        ds = f["groups/n1_h3_w5_f2/params/Conv_1/bias"]
        ds[0, 1] = ds[0, 1] + np.float32(1e-3)
    with GoldenFile(path) as gf:  # opens: structure and schema are intact
        assert gf.hash_problems() == ["case seeded-normal-n1-3x5-f2-s0: content hash "
                                      "mismatch of its forward arrays (data was modified)"]
        assert gf.hash_problems(parts=("stages",)) == []  # the edit is not in the stages
        with pytest.raises(GoldenFormatError, match="forward arrays"):
            _ = gf.case("seeded-normal-n1-3x5-f2-s0").params


def test_case_ids_disagreeing_with_the_index_fail_verification(golden):
    """groups/<g>/case_ids is how a reader without the JSON index finds a row; an edit
    that makes it disagree with the index must not verify."""
    from resblock.golden.verify import verify_file

    path, _ = golden
    with h5py.File(path, "r+") as f:
        f["groups/n1_h4_w4_f4/case_ids"][0] = "seeded-normal-n1-4x4-f4-s9"
    v = verify_file(path)
    assert not v.ok
    assert any("case_ids" in p for p in v.problems), v.problems


def test_index_reordered_breaks_the_content_hash(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"] = meta["cases"][::-1]
    rewrite_metadata(path, meta)
    with GoldenFile(path) as gf:
        assert gf.hash_problems() == ["file content hash does not match its case index"]


def test_metadata_roundtrips_as_json(smoke_golden):
    path, meta = smoke_golden
    with h5py.File(path, "r") as f:
        raw = f["metadata"][()]
    assert json.loads(raw.decode() if isinstance(raw, bytes) else raw) == meta


def _as_format_2(path, rewrite_metadata):
    """Rewrite a golden as format 2.1 wrote it: no part digests, one hash per case over
    every array of the case."""
    from resblock.golden.store import case_sha256, content_sha256, group_arrays, index_fields

    with h5py.File(path, "r") as f:
        meta = json.loads(f["metadata"][()])
        for e in meta["cases"]:
            del e["parts"]
            g = f[f"groups/{e['group']}"]
            e["sha256"] = case_sha256(e["id"], {k: g[k][e["row"]] for k in group_arrays(g)},
                                      index_fields(e))
    meta["format_version"] = "2.1.0"
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)


def test_format_2_files_are_still_read_and_verified(golden, rewrite_metadata):
    from resblock.golden.verify import verify_file

    path, meta = golden
    _as_format_2(path, rewrite_metadata)
    with GoldenFile(path) as gf:
        assert not gf.sealed_by_parts and gf.hash_problems() == []
        group = meta["groups"][0]["name"]
        assert list(gf.parts(group)) == ["all"]
        assert gf.case(gf.ids[0]).x.shape == Case.from_id(gf.ids[0]).x_shape
    assert verify_file(path, derive=False).ok
    with h5py.File(path, "r+") as f:
        f[f"groups/{group}/oracle/stages/bn2"][0, 0, 0, 0, 0] += 1.0
    with GoldenFile(path) as gf:  # one hash over all arrays: a stage edit spoils the case
        cid = next(e["id"] for e in gf.entries if e["group"] == group and e["row"] == 0)
        assert gf.hash_problems() == [f"case {cid}: content hash mismatch (data was "
                                      "modified)"]
        with pytest.raises(GoldenFormatError, match="content hash mismatch"):
            _ = gf.case(cid).x


def test_a_part_digest_dropped_from_the_index_is_refused(golden, rewrite_metadata):
    path, meta = golden
    del meta["cases"][0]["parts"]["stages"]
    rewrite_metadata(path, meta)
    _open_fails(path, "has digests for parts ['forward'], but its group holds ['forward', "
                      "'stages']")
    del meta["cases"][0]["parts"]["forward"]
    rewrite_metadata(path, meta)
    _open_fails(path, "at cases/0/parts: 'forward' is a required property")
    del meta["cases"][0]["parts"]
    rewrite_metadata(path, meta)
    _open_fails(path, "has digests for parts [], but its group holds ['forward', 'stages']")


def _as_format_3(path, rewrite_metadata):
    """Rewrite a golden as format 3 wrote it: no spreads (``sigma/``, ``sigma_conv/``),
    each case sealed in parts over the remaining arrays."""
    from resblock.golden.store import STAGES_MARKER, content_sha256, group_arrays, seal

    with h5py.File(path, "r+") as f:
        meta = json.loads(f["metadata"][()])
        for g in meta["groups"]:
            grp = f[f"groups/{g['name']}"]
            for kind in ("sigma", "sigma_conv", "sigma_store", "budget_store"):
                del grp[kind]
        for e in meta["cases"]:
            g = f[f"groups/{e['group']}"]
            names = group_arrays((STAGES_MARKER,) + (("grad/y_bar",) if "grad" in g else ()))
            seal(e, {k: g[k][e["row"]] for k in names})
    meta["format_version"] = "3.1.0"
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)


def test_format_3_files_are_read_without_the_aggregate_test(golden, rewrite_metadata):
    from resblock.golden.verify import verify_file
    from resblock.spec import tolerance

    path, meta = golden
    _as_format_3(path, rewrite_metadata)
    with GoldenFile(path) as gf:
        assert gf.sealed_by_parts and gf.hash_problems() == []
        gc = gf.case(gf.ids[0])
        assert not gc.has_spreads and "sigma/y" not in gc.arrays
        assert gc.aggregate_score("output", gc.arrays["y"], tolerance.profile()) is None
    assert verify_file(path, derive=False).ok


def _as_format_5(path, rewrite_metadata):
    """Rewrite a golden as format 5 wrote it: no storage budgets and spreads
    (``budget_store/``, ``sigma_store/``), each case sealed over the remaining arrays."""
    from resblock.golden.store import STAGES_MARKER, content_sha256, group_arrays, seal

    with h5py.File(path, "r+") as f:
        meta = json.loads(f["metadata"][()])
        for g in meta["groups"]:
            grp = f[f"groups/{g['name']}"]
            for kind in ("sigma_store", "budget_store"):
                del grp[kind]
        for e in meta["cases"]:
            g = f[f"groups/{e['group']}"]
            names = group_arrays(("sigma/y", STAGES_MARKER)
                                 + (("grad/y_bar",) if "grad" in g else ()))
            seal(e, {k: g[k][e["row"]] for k in names})
    meta["format_version"] = "5.0.0"
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)


def test_format_5_files_get_their_storage_budgets_recomputed(golden, rewrite_metadata):
    """A file older than format 6 has no budget_store/ or sigma_store/: a check under fp16
    or bf16 recomputes them from the inputs, the same numbers the generator stores."""
    from resblock.spec import tolerance

    path, _ = golden
    fp16 = tolerance.profile("fp16")
    with GoldenFile(path) as gf:
        stored = {cid: (gf.case(cid).bound("output", fp16),
                        gf.case(cid).bound("BatchNorm_1/var", fp16),
                        gf.case(cid).bound("conv2", fp16),
                        gf.case(cid).spread("y", fp16)[2]) for cid in gf.ids}
        assert all(gf.case(cid).has_store for cid in gf.ids)
    _as_format_5(path, rewrite_metadata)
    with GoldenFile(path) as gf:
        assert gf.hash_problems() == []
        for cid in gf.ids:
            gc = gf.case(cid)
            assert not gc.has_store and "budget_store/y" not in gc.arrays
            got = (gc.bound("output", fp16), gc.bound("BatchNorm_1/var", fp16),
                   gc.bound("conv2", fp16), gc.spread("y", fp16)[2])
            for a, b in zip(got, stored[cid], strict=True):
                np.testing.assert_array_equal(a, b)
            # fp32 never reads them
            assert gc.aggregate_score("output", gc.arrays["y"], tolerance.profile()) < 0.1


def test_storage_profiles_have_no_backward_bound_yet():
    from resblock.conformance.judging.runner import CheckConfig
    from resblock.golden.store import GoldenCase
    from resblock.spec import tolerance

    gc = GoldenCase(case=Case.from_id("functional-normal-n2-4x4-f4-s0"), entry={}, arrays={})
    for name in ("fp16", "bf16"):
        with pytest.raises(tolerance.ProfileError, match="backward's error model has no "
                                                         "storage term"):
            gc.grad_bound("x", tolerance.profile(name))
        with pytest.raises(tolerance.ProfileError, match="check the backward under fp32"):
            CheckConfig(target="t", api="backward", profile=name)
    CheckConfig(target="t", api="backward", profile="bf16-conv")  # no storage term needed


def test_format_4_cases_carry_spreads_for_the_aggregate_test(golden):
    from resblock.spec import tolerance

    path, _ = golden
    with GoldenFile(path) as gf:
        gc = gf.case(gf.ids[0])
        assert gc.has_spreads
        score = gc.aggregate_score("output", gc.arrays["y"], tolerance.profile())
        assert 0 <= score < 0.1  # the reference's own output
        wrong = np.asarray(gc.arrays["y"]) * np.float32(1 + 2 ** -10)
        assert gc.aggregate_score("output", wrong, tolerance.profile()) > 1


def test_storage_profiles_bound_the_inference_block():
    """fp16/bf16 under --api inference (spec 12.4): the bound adds ``u_s budget_store``;
    a 6.0.0 file written without the inference storage term recomputes it from the
    inputs, equal to what the generator stores."""
    from resblock.conformance.judging.runner import CheckConfig
    from resblock.generator.engine import inference_arrays
    from resblock.golden.store import GoldenCase
    from resblock.spec import tolerance

    case = Case.from_id("functional-normal-n2-4x4-f4-s0")
    x = derive_x(case)
    params, stats = derive_variables(case)
    running = {k: {"mean": v["mean"] + 0.5, "var": v["var"] + 2.0} for k, v in stats.items()}
    full = inference_arrays(x, params, running, np.zeros(x.shape, np.float32))
    arrays = {"x": x} | {f"params/{k}/{kk}": vv for k, v in params.items()
                         for kk, vv in v.items()} | full
    old = {n: a for n, a in arrays.items() if "_store/" not in n}
    new_gc = GoldenCase(case=case, entry={}, arrays=arrays)
    old_gc = GoldenCase(case=case, entry={}, arrays=old)
    assert new_gc.has_inference_store and not old_gc.has_inference_store
    for name in ("fp16", "bf16"):
        prof = tolerance.profile(name)
        b = new_gc.inference_bound(prof)
        np.testing.assert_array_equal(b, old_gc.inference_bound(prof))
        assert np.all(b > new_gc.inference_bound(tolerance.profile("fp32")))
        CheckConfig(target="t", api="inference", profile=name)  # no refusal
