"""Tests for golden/manifest.py, on a scratch directory and on the committed set."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from resblock.errors import GoldenFormatError, SchemaError
from resblock.golden import manifest


@pytest.fixture
def scratch(smoke_golden, tmp_path):
    path, meta = smoke_golden
    d = tmp_path / "set"
    d.mkdir()
    dst = d / "smoke.h5"
    shutil.copyfile(path, dst)
    doc = {"format_version": "1.0.0", "spec_version": "1.0.0",
           "regenerate": manifest.REGENERATE,
           "files": [manifest.manifest_entry(dst, "smoke", meta)]}
    (d / "MANIFEST.json").write_text(json.dumps(doc))
    return d, dst, meta


def test_manifest_entry(scratch):
    d, dst, meta = scratch
    entry = manifest.load_manifest(d)["files"][0]
    assert entry == {"path": "smoke.h5", "preset": "smoke", "cases": 5,
                     "bytes": dst.stat().st_size,
                     "file_sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
                     "content_sha256": meta["content_sha256"]}
    assert manifest.committed_paths(d) == [dst]
    assert manifest.manifest_problems(d) == []


def test_edited_file_is_reported(scratch):
    d, dst, _ = scratch
    data = bytearray(dst.read_bytes())
    data[-1] ^= 1
    dst.write_bytes(bytes(data))
    (problem,) = manifest.manifest_problems(d)
    assert str(dst) in problem and "differs from MANIFEST.json" in problem
    assert manifest.REGENERATE in problem


def test_missing_file_is_reported(scratch):
    d, dst, _ = scratch
    dst.unlink()
    assert manifest.manifest_problems(d) == [f"{dst}: listed in MANIFEST.json but missing"]


def test_missing_or_invalid_manifest(scratch, tmp_path):
    with pytest.raises(GoldenFormatError, match="the golden manifest is missing"):
        manifest.load_manifest(tmp_path)
    d, _, _ = scratch
    doc = json.loads((d / "MANIFEST.json").read_text())
    doc["files"] = []
    (d / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(SchemaError, match="MANIFEST.json does not validate"):
        manifest.load_manifest(d)


def test_committed_set_matches_its_manifest():
    paths = manifest.committed_paths()
    assert paths and all(p.is_file() for p in paths)
    assert manifest.manifest_problems() == []
