"""Tests for resblock/cli.py and the commands it registers (generate, verify, list, show,
spec): exit codes 0 / 1 / 2 and messages, through click's CliRunner."""

from __future__ import annotations

import json

import h5py
import jax
import pytest
from click.testing import CliRunner

from resblock import __version__
from resblock.cli import cli
from resblock.errors import GoldenFormatError, GridError, HarnessError, SchemaError, SpecError
from resblock.spec.constants import load

TINY = ["--family", "seeded,functional", "--batch", "1,2", "--shapes", "3x5", "--features", "2"]


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def tiny_golden(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.h5"
    r = run("generate", "-o", path, *TINY)
    assert r.exit_code == 0, r.output
    return path, r


def test_generate_reports_what_it_wrote(tiny_golden):
    path, r = tiny_golden
    assert "generating 3 cases" in r.output
    assert f"wrote {path}: 3 cases, content sha256 " in r.output
    assert "device cpu" in r.output
    assert path.is_file()


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = run("-h")
    assert r.exit_code == 0
    for cmd in ("generate", "verify", "list", "show", "spec"):
        assert cmd in r.output


# -- generate: argument errors exit 2 and write nothing ------------------------------
@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "Invalid value for '--preset'"),
    (["--family", "seeded", "--batch", "4"], "the grid is empty"),
    (["--shapes", "-1x4"], "'-1x4': sizes must be positive"),
    (["--shapes", "0x4"], "sizes must be positive"),
    (["--shapes", "4by4"], "'4by4' is not a shape like 4x4"),
    (["--shapes", "4x4,"], "is not a shape like 4x4"),
    (["--shapes", "4x4x3", "--features", "4"], "C=3 but features=4"),
    (["--seeds", "a-b"], "'a-b' is not an integer or a range"),
    (["--seeds", "5-2"], "'5-2': values must be >= 0 and ranges ascending"),
    (["--seeds", "2147483648"], "seed must be an integer in [0, 2^31)"),
    (["--features", "0"], "values must be >= 1"),
    (["--batch", "0"], "values must be >= 1"),
    (["--family", "resnet"], "expected a comma list of seeded, functional, stress"),
    (["--inputs", "uniform"], "expected a comma list of normal, lowamp, large, offset"),
    (["--shapes", "4x4,4x4"], "duplicate case id"),
    (["--preset", "smoke", "--seeds", "1"], "--preset cannot be combined with axis options"),
    (["--preset", "smoke", "--family", "seeded"], "['families']"),
    (["--device", "tpu"], "Invalid value for '--device'"),
])
def test_generate_argument_errors(tmp_path, args, message):
    out = tmp_path / "g.h5"
    r = run("generate", "-o", out, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


def test_generate_preset(tmp_path):
    out = tmp_path / "smoke.h5"
    r = run("generate", "-o", out, "--preset", "smoke")
    assert r.exit_code == 0, r.output
    assert "generating 5 cases" in r.output
    r = run("list", out)
    assert r.exit_code == 0 and "5 cases, preset smoke" in r.output


def test_generate_requires_an_output(tmp_path):
    r = run("generate", "--shapes", "2x2")
    assert r.exit_code == 2 and "Missing option '-o' / '--output'" in r.output


def test_generate_refuses_to_overwrite(tiny_golden):
    path, _ = tiny_golden
    before = path.read_bytes()
    r = run("generate", "-o", path, "--shapes", "3x5", "--features", "2")
    assert r.exit_code == 2
    assert f"{path} exists; pass --force to replace it" in r.output
    assert path.read_bytes() == before


def test_generate_force_replaces(tmp_path):
    path = tmp_path / "g.h5"
    path.write_bytes(b"an old file")
    r = run("generate", "-o", path, "--force", "--shapes", "3x5", "--features", "2")
    assert r.exit_code == 0, r.output
    r = run("list", path)
    assert r.exit_code == 0
    assert "seeded-normal-n1-3x5-f2-s0" in r.output and "1 cases" in r.output


@pytest.mark.skipif(bool([d for d in jax.devices() if d.platform == "gpu"]),
                    reason="a GPU is present")
def test_generate_on_a_missing_gpu_exits_2(tmp_path):
    r = run("generate", "-o", tmp_path / "g.h5", "--shapes", "3x5", "--features", "2",
            "--device", "gpu")
    assert r.exit_code == 2
    assert "Error: --device gpu: JAX sees no GPU here" in r.output
    assert list(tmp_path.iterdir()) == []


def test_malformed_source_date_epoch_is_a_usage_error(tmp_path, monkeypatch):
    """A bad SOURCE_DATE_EPOCH is a harness error (exit 2, one line), not a traceback."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    r = run("generate", "-o", tmp_path / "g.h5", "--shapes", "3x5", "--features", "2")
    assert r.exit_code == 2, (r.exit_code, repr(r.exception))
    assert "SOURCE_DATE_EPOCH" in r.output
    assert list(tmp_path.iterdir()) == []


# -- verify ---------------------------------------------------------------------------
def test_verify_ok(tiny_golden):
    path, _ = tiny_golden
    r = run("verify", path)
    assert r.exit_code == 0, r.output
    assert f"ok   {path}: 3 cases" in r.output


def test_verify_missing_file(tmp_path):
    missing = tmp_path / "absent.h5"
    r = run("verify", missing)
    assert r.exit_code == 1
    assert f"FAIL {missing}: no such golden file" in r.output


def test_verify_non_hdf5_file(tmp_path):
    p = tmp_path / "readme.h5"
    p.write_text("hello\n")
    r = run("verify", p)
    assert r.exit_code == 1
    assert f"FAIL {p}: not a readable HDF5 file" in r.output


def test_verify_damaged_hdf5_structure(tiny_golden, tmp_path):
    path, _ = tiny_golden
    data = bytearray(path.read_bytes())
    i = data.find(b"TREE")
    data[i:i + 4] = b"XXXX"
    bad = tmp_path / "damaged.h5"
    bad.write_bytes(bytes(data))
    r = run("verify", bad)
    assert r.exit_code == 1, repr(r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    assert f"FAIL {bad}: " in r.output


def test_verify_modified_element(tiny_golden, tmp_path):
    path, _ = tiny_golden
    copy = tmp_path / "copy.h5"
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "r+") as f:
        f["groups/n2_h3_w5_f2/x"][0, 0, 0, 0, 0] = 42.0
    r = run("verify", copy)
    assert r.exit_code == 1
    assert "case functional-normal-n2-3x5-f2-s0: content hash mismatch" in r.output


def test_verify_unknown_profile(tiny_golden):
    path, _ = tiny_golden
    r = run("verify", "--profile", "fp8", path)
    assert r.exit_code == 2 and "Invalid value for '--profile'" in r.output
    r = run("verify", "--profile", "tf32", path)  # renamed in spec 5.0
    assert r.exit_code == 2 and "renamed 'tf32-conv'" in r.output


def test_verify_under_a_storage_profile(tiny_golden):
    path, _ = tiny_golden
    r = run("verify", "--profile", "bf16", path)
    assert r.exit_code == 0, r.output


def test_verify_without_paths_checks_the_committed_set():
    r = run("verify")
    assert r.exit_code == 0, r.output
    from resblock.golden.cli import default_goldens
    from resblock.golden.reader import GoldenFile

    with GoldenFile(default_goldens()[0]) as gf:
        n = len(gf.entries)
    assert n >= 50 and f"default.h5: {n} cases" in r.output


# -- list / show -------------------------------------------------------------------------
def test_list(tiny_golden):
    path, _ = tiny_golden
    r = run("list", path)
    assert r.exit_code == 0
    lines = r.output.splitlines()
    from resblock.spec.constants import FORMAT_VERSION, SPEC_VERSION

    assert lines[0] == (f"# {path}: format {FORMAT_VERSION}, spec {SPEC_VERSION}, 3 cases, "
                        "preset none (explicit axes)")
    assert sorted(line.split()[0] for line in lines[1:]) == [
        "functional-normal-n1-3x5-f2-s0", "functional-normal-n2-3x5-f2-s0",
        "seeded-normal-n1-3x5-f2-s0"]


def test_list_missing_file_exits_2(tmp_path):
    r = run("list", tmp_path / "absent.h5")
    assert r.exit_code == 2
    assert "no such golden file" in r.output


def test_show(tiny_golden):
    path, _ = tiny_golden
    r = run("show", path, "functional-normal-n2-3x5-f2-s0")
    assert r.exit_code == 0, r.output
    assert "group      n2_h3_w5_f2" in r.output
    assert "params/Conv_0/kernel" in r.output and "(3, 3, 2, 2)" in r.output
    assert "oracle/y" in r.output and "float64" in r.output
    # generated without --stages: the stage data is said to be absent, and how to get it
    assert "oracle/stages/bn2" not in r.output
    assert "no stage data stored" in r.output and "--stages" in r.output


def test_show_a_file_with_stage_data(smoke_golden):
    path, _ = smoke_golden
    r = run("show", path, "functional-normal-n2-4x4-f4-s0")
    assert r.exit_code == 0, r.output
    assert "oracle/stages/bn2" in r.output and "no stage data" not in r.output


def test_show_unknown_case_exits_2(tiny_golden):
    path, _ = tiny_golden
    r = run("show", path, "seeded-normal-n1-9x9-f2-s0")
    assert r.exit_code == 2
    assert f"Error: {path}: no case 'seeded-normal-n1-9x9-f2-s0'" in r.output
    assert "resblock list" in r.output


# -- spec ----------------------------------------------------------------------------------
def test_spec_prints_the_version():
    r = run("spec")
    assert r.exit_code == 0
    from resblock.spec.constants import FORMAT_VERSION, SPEC_VERSION

    assert r.output.startswith(f"resblock spec {SPEC_VERSION} (golden format {FORMAT_VERSION})")
    assert "momentum 0.99" in r.output and "epsilon 1e-05 inside sqrt" in r.output


def test_spec_json_parses():
    r = run("spec", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data == load()
    assert data["spec_version"].startswith("7.")


# -- error hierarchy the CLI maps to exit codes ---------------------------------------------
def test_error_hierarchy():
    for cls in (GridError, GoldenFormatError, SchemaError):
        assert issubclass(cls, HarnessError)
    assert issubclass(SchemaError, GoldenFormatError)
    assert issubclass(SpecError, ValueError) and not issubclass(SpecError, HarnessError)
