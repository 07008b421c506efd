"""Tests for generator/run.py: generate() writes what the engine computes, atomically,
deterministically, and never over an existing golden without force."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.errors import GoldenFormatError, HarnessError
from resblock.generator import engine, grid
from resblock.generator.compute import resolve_device
from resblock.generator.run import generate
from resblock.golden.reader import GoldenFile
from resblock.golden.store import CASE_ARRAYS
from resblock.golden.writer import GoldenWriter
from resblock.schemas import errors

# 3 cases in 2 shape groups; shapes shared with tests/spec so JAX compiles stay cached.
AXES = dict(families=("seeded", "functional"), inputs=("normal",), batches=(1, 2),
            shapes=((3, 5),), features=(2,), seeds=(0,))
CLI_AXES = ["--family", "seeded,functional", "--batch", "1,2", "--shapes", "3x5",
            "--features", "2", "--seeds", "0"]
CLI = [sys.executable, "-c", "from resblock.cli import main; main()"]


def tiny_cases():
    return grid.axes_cases(**AXES)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_generate_writes_what_the_engine_computes(tmp_path):
    cases = tiny_cases()
    steps = []
    path = tmp_path / "g.h5"
    meta = generate(cases, path, progress=steps.append)
    assert sum(steps) == len(cases) == 3 and len(steps) == 2
    assert errors(meta, "golden-metadata") == []
    assert _leftovers(tmp_path) == []
    runner = engine.ReferenceRunner(jax.devices("cpu")[0])
    with GoldenFile(path) as gf:
        assert gf.metadata == meta
        assert sorted(gf.ids) == sorted(c.id for c in cases)
        for group in grid.group_cases(cases):
            arrays, extras = engine.compute_group(group, runner)
            for row, case in enumerate(group):
                gc = gf.case(case.id)
                assert gc.entry["kappa"] == extras[row]["kappa"]
                assert gc.entry["ref_score"] == extras[row]["ref_score"]
                assert set(gc.arrays) == set(arrays)  # no stage data by default
                assert set(arrays) < set(CASE_ARRAYS)
                for name in arrays:
                    np.testing.assert_array_equal(gc.arrays[name], arrays[name][row],
                                                  err_msg=name)
    assert meta["grid"] == {"preset": None, "definition": {"cases": [c.id for c in cases]},
                            "shard": None}
    assert meta["environment"]["backend"] == "cpu"
    assert meta["computation"]["precision"] == "highest"
    r = CliRunner().invoke(cli, ["verify", str(path)])
    assert r.exit_code == 0, r.output


def test_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "g.h5"
    path.write_bytes(b"precious")
    with pytest.raises(GoldenFormatError, match="already exists.*--force"):
        generate(tiny_cases(), path)
    assert path.read_bytes() == b"precious"
    with pytest.raises(GoldenFormatError, match="--force"):
        GoldenWriter(path)


def test_force_replaces(tmp_path):
    path = tmp_path / "g.h5"
    path.write_bytes(b"old")
    meta = generate(tiny_cases(), path, force=True)
    with GoldenFile(path) as gf:
        assert gf.metadata["content_sha256"] == meta["content_sha256"]


def _fail_after_first_group(monkeypatch):
    real = engine.compute_group
    calls = []

    def flaky(group, *args, **kwargs):
        calls.append(group)
        if len(calls) > 1:
            raise RuntimeError("simulated crash in the second group")
        return real(group, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_group", flaky)
    return calls


def test_interrupted_generate_leaves_no_file_and_no_tmp(tmp_path, monkeypatch):
    calls = _fail_after_first_group(monkeypatch)
    path = tmp_path / "g.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(tiny_cases(), path)
    assert len(calls) == 2
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_forced_generate_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "g.h5"
    path.write_bytes(b"old golden")
    _fail_after_first_group(monkeypatch)
    with pytest.raises(RuntimeError):
        generate(tiny_cases(), path, force=True)
    assert path.read_bytes() == b"old golden"
    assert _leftovers(tmp_path) == []


def _bytes_under(directory):
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_sigkill_mid_run_leaves_no_golden(tmp_path):
    out = tmp_path / "big.h5"
    proc = subprocess.Popen(
        CLI + ["generate", "-o", str(out), "--shapes", "8x8,9x9,10x10,11x11", "--seeds", "0-3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill once a shape group has been written to a temporary file (they grow per group)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if _bytes_under(tmp_path) > 10_000:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "generate finished before it could be killed"
        assert _bytes_under(tmp_path) > 10_000, "nothing was written within 60 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(n.startswith(".big.h5.") for n in left), left  # dot-prefixed only
    with pytest.raises(GoldenFormatError, match="no such golden file"):
        GoldenFile(out)
    GoldenWriter(out)  # a later run is not blocked by the leftover


def test_same_arguments_give_byte_identical_files(tmp_path, monkeypatch):
    """Twice in this process and once through the CLI in a fresh one."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    ma = generate(tiny_cases(), a)
    mb = generate(tiny_cases(), b)
    assert ma["created"] == "2023-11-14T22:13:20Z"
    assert ma["content_sha256"] == mb["content_sha256"]
    assert a.read_bytes() == b.read_bytes()
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    r = subprocess.run(CLI + ["generate", "-o", str(c)] + CLI_AXES, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ma["content_sha256"][:16] in r.stdout
    assert c.read_bytes() == a.read_bytes()


def test_creation_time_changes_bytes_but_not_content_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    m0 = generate(tiny_cases(), tmp_path / "a.h5")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    m1 = generate(tiny_cases(), tmp_path / "b.h5")
    assert (m0["created"], m1["created"]) == ("1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z")
    assert m0["content_sha256"] == m1["content_sha256"]
    assert [e["sha256"] for e in m0["cases"]] == [e["sha256"] for e in m1["cases"]]
    assert (tmp_path / "a.h5").read_bytes() != (tmp_path / "b.h5").read_bytes()


def test_adding_cases_keeps_every_case_hash(tmp_path):
    small = tiny_cases()
    big = grid.axes_cases(**dict(AXES, seeds=(0, 1), shapes=((3, 5), (4, 4))))
    ms = generate(small, tmp_path / "s.h5")
    mb = generate(big, tmp_path / "b.h5")
    hb = {e["id"]: e["sha256"] for e in mb["cases"]}
    assert len(hb) > len(ms["cases"])
    for e in ms["cases"]:
        assert hb[e["id"]] == e["sha256"], e["id"]


def test_resolve_device():
    assert resolve_device("cpu").platform == "cpu"
    auto = resolve_device("auto")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        assert auto == gpus[0] and resolve_device("gpu") == gpus[0]
    else:
        assert auto.platform == "cpu"
        with pytest.raises(HarnessError, match="--device gpu: JAX sees no GPU"):
            resolve_device("gpu")


def test_inference_block_is_the_same_whatever_the_split(tmp_path, monkeypatch):
    """``--inference`` in one process, over forked workers and over shards merged: the
    same content hash, every group with the inference part, a NumPy port conforming."""
    from resblock.conformance.judging.runner import CheckConfig, run_check
    from resblock.conformance.mistakes.variants_inference import make_infer
    from resblock.conformance.running.invoke import InProcess
    from resblock.golden.merge import merge_files

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cases = grid.preset_cases("smoke")
    one = generate(cases, tmp_path / "one.h5", preset="smoke", inference=True, jobs=1)
    two = generate(cases, tmp_path / "two.h5", preset="smoke", inference=True, jobs=2)
    shards = [tmp_path / f"s{k}.h5" for k in (1, 2)]
    for k, path in enumerate(shards, start=1):
        generate(cases, path, preset="smoke", inference=True, shard=f"{k}/2", jobs=1)
    merge_files(tmp_path / "merged.h5", shards)
    with GoldenFile(tmp_path / "merged.h5") as gf:
        merged = gf.metadata["content_sha256"]
        assert all(gf.group_has_inference(g["name"]) for g in gf.metadata["groups"])
    assert one["content_sha256"] == two["content_sha256"] == merged
    cfg = CheckConfig(target="t", api="inference", diagnose=False)
    run = run_check(cfg, InProcess(make_infer("folded"), "inference", "nhwc"),
                    [tmp_path / "merged.h5"])
    assert run.conforms and len(run.results) == 5


def test_default_jobs_split_only_where_execution_outweighs_compilation(monkeypatch):
    """One process while compilation dominates (the compile worker already uses the
    second core); two where execution does: the real-size preset, and the bench grid's
    backward (ten times its forward's execution), never more than the cores."""
    from resblock.generator.grid import group_cases, preset_cases
    from resblock.generator.run import default_jobs

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    got = {}
    for name in ("smoke", "default", "bench", "resnet18"):
        cases = preset_cases(name)
        groups = group_cases(cases)
        got[name] = (default_jobs(cases, groups), default_jobs(cases, groups, grad=True))
    assert got == {"smoke": (1, 1), "default": (1, 1), "bench": (1, 2), "resnet18": (2, 2)}
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    cases = preset_cases("resnet18")
    assert default_jobs(cases, group_cases(cases), grad=True) == 1
