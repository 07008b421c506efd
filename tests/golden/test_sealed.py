"""Sealed goldens (issue 12): every number that can change a verdict is under a hash that
check, diff and merge verify, and verify re-derives the inputs from the case ids.

Each probe edits a copy of the smoke golden the way an attacker or a careless script
would, recomputing whatever hashes it can, and expects a refusal.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.errors import GoldenFormatError
from resblock.golden.diff import diff_files
from resblock.golden.merge import merge_files
from resblock.golden.reader import GoldenFile
from resblock.golden.store import (
    case_sha256,
    content_sha256,
    group_arrays,
    index_fields,
    seal,
)
from resblock.golden.verify import verify_file

EXAMPLE_ZEROS = """
import numpy as np
def forward(x, params, stats):
    return np.zeros_like(x), stats
"""


def _set_kappa(path, rewrite_metadata, value):
    """Every kappa set to ``value``; the content hash recomputed, the case hashes kept."""
    with h5py.File(path, "r") as f:
        meta = json.loads(f["metadata"][()])
    for e in meta["cases"]:
        e["kappa"] = value
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)


def test_the_case_hash_covers_every_index_number():
    a = np.arange(4, dtype=np.float32)
    entry = {"id": "c", "kappa": 2.0, "ref_score": 0.1, "group": "g", "row": 0}
    base = case_sha256("c", {"a": a}, index_fields(entry))
    for key, value in (("kappa", 1e30), ("ref_score", 0.0), ("budget_scale", 1.0)):
        assert case_sha256("c", {"a": a}, index_fields(dict(entry, **{key: value}))) != base
    # Where the case lives is checked structurally, not hashed: merge may renumber rows.
    assert case_sha256("c", {"a": a}, index_fields(dict(entry, row=3, group="h"))) == base


def test_an_inflated_kappa_is_refused_by_check_diff_and_merge(golden, rewrite_metadata,
                                                              smoke_golden, tmp_path):
    path, _ = golden
    _set_kappa(path, rewrite_metadata, 1e30)
    with GoldenFile(path) as gf:
        assert any("index hash mismatch" in p for p in gf.hash_problems())
    impl = tmp_path / "zeros.py"
    impl.write_text(EXAMPLE_ZEROS)
    r = CliRunner().invoke(cli, ["check", "-q", "--in-process", "--impl", f"{impl}:forward",
                                 "--goldens", str(path)])
    assert r.exit_code == 2 and "index hash mismatch" in r.output, r.output
    with pytest.raises(GoldenFormatError, match="index hash mismatch"):
        diff_files(smoke_golden[0], path)
    with pytest.raises(GoldenFormatError, match="index hash mismatch"):
        merge_files(tmp_path / "merged.h5", [path])
    assert not (tmp_path / "merged.h5").exists()


def test_verify_rederives_replaced_inputs(golden, rewrite_metadata):
    path, meta = golden
    e = meta["cases"][0]
    with h5py.File(path, "r+") as f:
        g = f[f"groups/{e['group']}"]
        x = g["x"][()]
        x[e["row"]] = x[e["row"]] * np.float32(0.5)
        g["x"][...] = x
        seal(e, {k: g[k][e["row"]] for k in group_arrays(g)})
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)
    v = verify_file(path)
    assert not v.ok
    assert (f"{path}: case {e['id']}: stored x differs from the input derived from the case "
            "id: the file's inputs were replaced") in v.problems
    r = CliRunner().invoke(cli, ["verify", "--no-derive", str(path)])
    assert r.exit_code == 1 and "derived from the case id" not in r.output  # skipped


def test_verify_says_when_it_could_not_rederive(smoke_golden, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # as if JAX were not installed
    v = verify_file(smoke_golden[0])
    assert v.ok, v.problems
    assert len(v.notes) == 1 and "inputs not re-derived" in v.notes[0]


def test_verify_fails_a_file_without_cases(golden, rewrite_metadata):
    path, meta = golden
    meta["cases"], meta["groups"] = [], []
    meta["content_sha256"] = content_sha256([])
    rewrite_metadata(path, meta)
    try:
        v = verify_file(path)
    except GoldenFormatError:  # a schema that demands cases refuses it on open: also fine
        return
    assert not v.ok and any("holds no case" in p for p in v.problems)
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 1


def test_verify_recomputes_the_oracle(golden, rewrite_metadata):
    # Outputs and oracle edited together and re-hashed: only recomputing the float64
    # oracle from the stored inputs can see it.
    path, meta = golden
    e = meta["cases"][0]
    with h5py.File(path, "r+") as f:
        g = f[f"groups/{e['group']}"]
        for name in ("y", "oracle/y"):
            a = g[name][()]
            a[e["row"]] = a[e["row"]] * 0.9
            g[name][...] = a
        seal(e, {k: g[k][e["row"]] for k in group_arrays(g)})
    meta["content_sha256"] = content_sha256(meta["cases"])
    rewrite_metadata(path, meta)
    v = verify_file(path, derive=False)
    assert any(p.startswith(f"{path}: case {e['id']}: stored oracle/y differs from the float64 "
                            "oracle recomputed") for p in v.problems), v.problems
