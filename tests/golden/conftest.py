"""Fixtures for the golden-format tests: one small golden file per session, and helpers
that damage a copy of it the way real files get damaged."""

from __future__ import annotations

import json
import shutil

import h5py
import pytest


@pytest.fixture
def golden(smoke_golden, tmp_path):
    """A writable copy of the smoke golden and its metadata."""
    src, meta = smoke_golden
    dst = tmp_path / "copy.h5"
    shutil.copyfile(src, dst)
    return dst, json.loads(json.dumps(meta))


def _rewrite_metadata(path, meta_or_text):
    text = meta_or_text if isinstance(meta_or_text, str) else json.dumps(meta_or_text)
    with h5py.File(path, "r+") as f:
        del f["metadata"]
        f.create_dataset("metadata", data=text, dtype=h5py.string_dtype("utf-8"))


@pytest.fixture
def rewrite_metadata():
    """``rewrite_metadata(path, dict_or_text)`` replaces a file's /metadata dataset."""
    return _rewrite_metadata
