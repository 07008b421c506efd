"""golden/merge.py and `resblock merge`: shards combine into exactly the full file."""

from __future__ import annotations

import h5py
import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.errors import GoldenFormatError
from resblock.generator.grid import preset_cases
from resblock.generator.run import generate
from resblock.golden.merge import merge_files
from resblock.golden.reader import GoldenFile


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        paths = []
        for k in (1, 2, 3):
            p = d / f"s{k}.h5"
            generate(preset_cases("smoke"), p, preset="smoke", shard=f"{k}/3", jobs=1,
                     stages=True)
            paths.append(p)
    return paths


def test_merge_equals_full_generation(shards, smoke_golden, tmp_path):
    full, meta = smoke_golden
    out = tmp_path / "m.h5"
    r = CliRunner().invoke(cli, ["merge", str(out), *map(str, shards)])
    assert r.exit_code == 0, r.output
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
        assert m.metadata["grid"]["shard"] is None
        assert m.hash_problems() == []


def test_shard_metadata_records_the_whole_grid(shards):
    with GoldenFile(shards[0]) as gf:
        assert gf.metadata["grid"]["shard"] == "1/3"
        assert gf.metadata["grid"]["preset"] == "smoke"
        assert len(gf.entries) < 5


def test_gap_refused_unless_allowed(shards, tmp_path):
    out = tmp_path / "m.h5"
    r = CliRunner().invoke(cli, ["merge", str(out), str(shards[0]), str(shards[1])])
    assert r.exit_code == 2 and "missing" in r.output and "--allow-gaps" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli, ["merge", str(out), str(shards[0]), str(shards[1]),
                                 "--allow-gaps"])
    assert r.exit_code == 0, r.output


def test_overlap_refused(shards, tmp_path):
    r = CliRunner().invoke(cli, ["merge", str(tmp_path / "m.h5"), *map(str, shards),
                                 str(shards[0])])
    assert r.exit_code == 2 and "overlapping" in r.output


def test_mismatched_environment_refused(shards, tmp_path, rewrite_metadata):
    import json
    import shutil

    bad = tmp_path / "bad.h5"
    shutil.copyfile(shards[2], bad)
    with h5py.File(bad, "r") as f:
        meta = json.loads(f["metadata"][()])
    meta["environment"]["jax"] = "0.0.1"
    rewrite_metadata(bad, meta)
    with pytest.raises(GoldenFormatError, match="environment.jax"):
        merge_files(tmp_path / "m.h5", [shards[0], shards[1], bad])


def test_shard_of_another_grid_refused(shards, tmp_path):
    other = tmp_path / "other.h5"
    generate(preset_cases("smoke")[:1], other, jobs=1)
    r = CliRunner().invoke(cli, ["merge", str(tmp_path / "m.h5"), str(shards[0]), str(other)])
    assert r.exit_code == 2 and "different grid" in r.output


def test_parallel_generation_is_bit_identical(smoke_golden, tmp_path, monkeypatch):
    """Two worker processes + merge give the same content as one process."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    full, _ = smoke_golden
    out = tmp_path / "par.h5"
    meta = generate(preset_cases("smoke"), out, preset="smoke", jobs=2, stages=True)
    with GoldenFile(full) as f:
        assert meta["content_sha256"] == f.metadata["content_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["par.h5"]  # shards cleaned up


def test_forked_workers_are_bit_identical(smoke_golden, tmp_path):
    """A fresh process forks its workers (no JAX backend yet): same content, no leftovers."""
    import os
    import subprocess
    import sys

    full, _ = smoke_golden
    out = tmp_path / "fork.h5"
    code = ("import sys\nfrom resblock.generator import compile_worker, run\n"
            "from resblock.generator.grid import preset_cases\n"
            "assert compile_worker.can_fork()\n"
            f"run.generate(preset_cases('smoke'), {str(out)!r}, preset='smoke', jobs=2,"
            " stages=True)\n")
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    with GoldenFile(out) as m, GoldenFile(full) as f:
        assert m.metadata["content_sha256"] == f.metadata["content_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["fork.h5"]
