"""Harness errors and exit codes of the conformance run (conformance/judging/runner.py:
``CheckConfig`` and the golden files it opens; cli.py). Whatever is wrong with the
harness' own inputs (an option, a -k that selects nothing, a golden file that is
truncated, unreadable, missing, schema-invalid, of another format version or modified)
is a :class:`HarnessError`, not a verdict; the CLI exits 0 when the implementation
conforms, 1 when it does not, and 2 for a harness error (a bad target, golden file,
selection or option), never 0 or 1.
"""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_runner import GOLDENS, GOOD, N_CASES, TWO_1X1, run_fn

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.running.invoke import InProcess
from resblock.errors import GoldenFormatError, HarnessError, TargetError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


# --- configuration and goldens: HarnessError ------------------------------------------


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"api": "batched"}, "--api 'batched'"),
        ({"layout": "nwhc"}, "--layout 'nwhc'"),
        ({"api": "seeded", "layout": "nchw"}, "--layout nchw does not apply"),
        ({"profile": "fp8"}, "unknown profile 'fp8'"),
        ({"timeout": 0}, "--timeout must be positive"),
        ({"timeout": -1.0}, "--timeout must be positive"),
    ],
)
def test_bad_configuration_is_a_harness_error(kw, fragment):
    with pytest.raises(HarnessError, match=fragment.replace("(", r"\(")):
        CheckConfig(target="t", **kw)


def test_keyword_that_selects_nothing_is_a_harness_error():
    with pytest.raises(HarnessError, match="no case selected: nothing to check"):
        run_fn(GOOD, keyword="nomatch")
    with pytest.raises(HarnessError, match="no case selected"):
        run_fn(lambda seed, x, f: x, api="seeded", keyword="functional")


@pytest.fixture(scope="module")
def golden_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("goldens")
    p = d / "copy.h5"
    shutil.copyfile(GOLDENS[0], p)
    return p


def _variant_file(golden_copy, name):
    p = golden_copy.parent / name
    shutil.copyfile(golden_copy, p)
    return p


@pytest.fixture(scope="module")
def truncated(golden_copy):
    p = golden_copy.parent / "truncated.h5"
    data = golden_copy.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def test_a_copy_of_the_goldens_is_accepted(golden_copy):
    cfg = CheckConfig(target="t", keyword="seeded-normal-n1-1x1")
    run = run_check(cfg, InProcess(GOOD, "functional", "nhwc"), [golden_copy])
    assert run.conforms and run.goldens[0]["path"] == str(golden_copy)


def test_truncated_golden(truncated):
    with pytest.raises(GoldenFormatError, match="not a readable HDF5 file"):
        run_fn_on([truncated])


def run_fn_on(paths, fn=GOOD):
    return run_check(CheckConfig(target="t"), InProcess(fn, "functional", "nhwc"), paths)


def test_unreadable_and_missing_goldens(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not HDF5\n" * 100)
    with pytest.raises(GoldenFormatError, match="junk.h5: not a readable HDF5 file"):
        run_fn_on([junk])
    with pytest.raises(GoldenFormatError, match="no such golden file"):
        run_fn_on([tmp_path / "absent.h5"])
    with pytest.raises(GoldenFormatError, match="no such golden file"):
        run_fn_on([tmp_path])  # a directory


def test_hdf5_without_metadata(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(GoldenFormatError, match="no /metadata dataset"):
        run_fn_on([p])


def _rewrite_metadata(path, change):
    with h5py.File(path, "r+") as f:
        meta = json.loads(f["metadata"][()].decode("utf-8"))
        change(meta)
        del f["metadata"]
        f.create_dataset("metadata", data=json.dumps(meta), dtype=h5py.string_dtype("utf-8"))


def test_schema_invalid_golden(golden_copy):
    p = _variant_file(golden_copy, "schema.h5")
    _rewrite_metadata(p, lambda m: m.update(bogus_field=1))
    with pytest.raises(GoldenFormatError,
                       match="metadata does not validate against schema 'golden-metadata'"):
        run_fn_on([p])


def test_golden_of_another_format_major_version(golden_copy):
    p = _variant_file(golden_copy, "format.h5")
    _rewrite_metadata(p, lambda m: m.update(format_version="7.0.0"))
    with pytest.raises(GoldenFormatError, match="format version 7.0.0"):
        run_fn_on([p])


def test_modified_golden_data_fails_its_hash(golden_copy):
    p = _variant_file(golden_copy, "modified.h5")
    with h5py.File(p, "r+") as f:
        f["groups/n1_h4_w4_f4/x"][0, 0, 0, 0, 0] += 1.0
    with pytest.raises(GoldenFormatError, match="content hash mismatch"):
        run_fn_on([golden_copy, p])


def test_golden_errors_are_harness_errors():
    assert issubclass(GoldenFormatError, HarnessError)
    assert issubclass(TargetError, HarnessError)


# --- the CLI: exit codes ---------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, ["check", "-q", *args])


def test_cli_exit_0_for_a_correct_example():
    r = invoke("--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward")
    assert r.exit_code == 0, r.output
    assert f"CONFORMS: {N_CASES} passed, 0 failed" in r.output


def test_cli_exit_1_for_a_wrong_variant(missing_residual_impl):
    r = invoke("--impl", f"{missing_residual_impl}:forward")
    assert r.exit_code == 1, r.output
    assert "DOES NOT CONFORM" in r.output
    assert "matches pitfall: missing_residual" in r.output


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("examples/numpy_float32.py", "expected MODULE:FUNCTION"),
        ("/nonexistent/dir/impl.py:forward", "no such file"),
        (f"{EXAMPLES / 'numpy_float32.py'}:fwd", "has no attribute 'fwd'; callables there:"),
        ("resblock_no_such_module:forward", "cannot import module"),
    ],
)
def test_cli_exit_2_for_a_bad_target(target, fragment):
    r = invoke("--impl", target)
    assert r.exit_code == 2
    assert "Error: --impl" in r.output and fragment in r.output
    assert "Traceback" not in r.output


def test_cli_exit_2_for_a_bad_target_in_the_worker(tmp_path):
    r = invoke("--impl", f"{tmp_path / 'absent.py'}:forward", "--timeout", "5", "-k", TWO_1X1)
    assert r.exit_code == 2
    assert "no such file" in r.output


def test_cli_exit_2_for_a_truncated_golden(truncated):
    r = invoke("--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", "--goldens", str(truncated))
    assert r.exit_code == 2
    assert "not a readable HDF5 file" in r.output


@pytest.mark.parametrize("args", [
    ["-k", "nomatch"],
    ["-k", "functional", "--api", "seeded"],
    ["-k", "seeded and"],
])
def test_cli_never_exits_0_when_nothing_is_checked(args):
    r = invoke("--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", *args)
    assert r.exit_code == 2
    assert "Error: " in r.output


@pytest.mark.parametrize("args", [
    [],
    ["--impl", "examples/numpy_float32.py:forward", "--exec", "prog {input} {output}"],
])
def test_cli_exit_2_unless_exactly_one_of_impl_and_exec(args):
    r = invoke(*args)
    assert r.exit_code == 2
    assert "give exactly one of --impl TARGET, --exec" in r.output


@pytest.mark.parametrize("args, fragment", [
    (["--timeout", "0"], "--timeout must be positive"),
    (["--api", "seeded", "--layout", "nchw"], "--layout nchw does not apply"),
    (["--profile", "fp8"], "Invalid value for '--profile'"),
])
def test_cli_exit_2_for_bad_options(args, fragment):
    r = invoke("--impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", *args)
    assert r.exit_code == 2
    assert fragment in r.output
