"""golden/diff.py and `resblock diff`: accept equal sets, reject TF32-like ones."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
from click.testing import CliRunner

from resblock.cli import cli
from resblock.golden.diff import diff_files, input_difference_reason
from resblock.golden.store import content_sha256, group_arrays, seal


def _edit(path, case_index, name, fn):
    """Apply fn to one array of one case and re-hash, so only the numbers are wrong."""
    with h5py.File(path, "r+") as f:
        meta = json.loads(f["metadata"][()])
        e = meta["cases"][case_index]
        g = f[f"groups/{e['group']}"]
        a = g[name][()]
        a[e["row"]] = fn(a[e["row"]])
        g[name][...] = a
        seal(e, {k: g[k][e["row"]] for k in group_arrays(g)})
        meta["content_sha256"] = content_sha256(meta["cases"])
        del f["metadata"]
        f.create_dataset("metadata", data=json.dumps(meta), dtype=h5py.string_dtype("utf-8"))
    return e["id"]


def test_identical_sets_agree(smoke_golden):
    path, _ = smoke_golden
    r = CliRunner().invoke(cli, ["diff", str(path), str(path)])
    assert r.exit_code == 0 and r.output.strip().endswith("AGREE"), r.output


def test_tf32_like_outputs_disagree(smoke_golden, tmp_path):
    path, _ = smoke_golden
    b = tmp_path / "b.h5"
    shutil.copyfile(path, b)
    b.chmod(0o644)
    # Round y to TF32's 10 mantissa bits: the error a TF32 regeneration shows.
    cid = _edit(b, 4, "y", lambda y: (y.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
                + np.float32(1e-3))
    res = diff_files(path, b)
    assert not res.agree
    bad = [c for c in res.cases if not c.ok]
    assert [c.id for c in bad] == [cid] and bad[0].inputs_identical and bad[0].score_b > 1
    r = CliRunner().invoke(cli, ["diff", str(path), str(b)])
    assert r.exit_code == 1 and "reduced-precision" in r.output and "DISAGREE" in r.output


def test_different_inputs_are_named_with_a_reason(smoke_golden, tmp_path):
    path, meta = smoke_golden
    b = tmp_path / "b.h5"
    shutil.copyfile(path, b)
    b.chmod(0o644)
    cid = _edit(b, 0, "x", lambda x: x + np.float32(1))
    res = diff_files(path, b)
    (c,) = [c for c in res.cases if not c.inputs_identical]
    assert c.id == cid and c.first_input_difference == "x"
    assert "should be identical" in res.input_reason
    other = json.loads(json.dumps(meta))
    other["environment"]["jax"] = "0.4.30"
    assert "different JAX versions (0.10.2 vs 0.4.30)" in input_difference_reason(meta, other) \
        or "different JAX versions" in input_difference_reason(meta, other)


def test_only_in_one_set_reported(smoke_golden, tmp_path):
    from resblock.generator.grid import preset_cases
    from resblock.generator.run import generate

    path, _ = smoke_golden
    b = tmp_path / "b.h5"
    generate(preset_cases("smoke")[:2], b, jobs=1)
    res = diff_files(path, b)
    assert len(res.cases) == 2 and len(res.only_a) == 3 and res.only_b == []
    assert not res.agree  # three cases were never compared
    assert diff_files(path, b, subset=True).agree
    r = CliRunner().invoke(cli, ["diff", str(path), str(b)])
    assert r.exit_code == 1 and "pass --subset" in r.output, r.output
    assert r.output.strip().endswith("DISAGREE")
    r = CliRunner().invoke(cli, ["diff", "--subset", str(b), str(path)])
    assert r.exit_code == 0 and r.output.strip().endswith("AGREE"), r.output
