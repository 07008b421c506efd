"""Tests of conformance/pytest_plugin.py: ``pytest --resblock-impl TARGET``.

The plugin is registered through the ``pytest11`` entry point named ``resblock`` (so it is
auto-loaded once the kit is installed, and ``-p resblock`` names it explicitly). Each
run is a fresh pytest in a subprocess (``pytester.runpytest_subprocess``) in an empty
directory, so only the plugin's items (one per committed golden case) are collected.
"""

from pathlib import Path

import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.pitfalls import lookup
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
with GoldenFile(default_goldens()[0]) as _gf:
    N_CASES = len(_gf.entries)
    N_SEEDED = sum(e["family"] == "seeded" for e in _gf.entries)


def expected_outcomes(variant, profile="fp32"):
    """(passed, failed) of ``variant`` as ``resblock check`` counts them."""
    run = run_check(CheckConfig(target=variant, profile=profile, diagnose=False),
                    InProcess(make_forward(variant), "functional", "nhwc"), default_goldens())
    return run.count("pass"), run.count("fail") + run.count("error")


def variant_file(pytester, variant):
    pytester.makepyfile(**{f"impl_{variant}": (
        "from resblock.conformance.mistakes.variants import make_forward\n\n"
        f"forward = make_forward({variant!r})\n")})
    return f"{pytester.path / f'impl_{variant}.py'}:forward"


def test_entry_point_names_the_plugin_module():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "resblock"]
    assert ep.value == "resblock.conformance.pytest_plugin"


def test_correct_example_passes_every_committed_case(pytester, monkeypatch):
    # With autoload off, "-p resblock" alone must load the plugin (by entry-point name).
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess(
        "--resblock-impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", "-q", "-p", "resblock")
    result.assert_outcomes(passed=N_CASES)
    assert result.ret == 0


def test_wrong_variant_fails_and_names_the_pitfall(pytester):
    target = variant_file(pytester, "missing_residual")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")  # the project's own tests
    passed, failed = expected_outcomes("missing_residual")
    assert failed > 0
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock")
    result.assert_outcomes(passed=passed + 1, failed=failed)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "seeded-normal-n1-4x4-f4-s0 does not conform:" in out
    assert "out of tolerance: output" in out
    assert f"matches pitfall missing_residual: {lookup('missing_residual').fix}" in out


def test_keyword_selects_plugin_items(pytester):
    result = pytester.runpytest_subprocess(
        "--resblock-impl", f"{EXAMPLES / 'numpy_float32.py'}:forward", "-q", "-p", "resblock",
        "-k", "seeded")
    result.assert_outcomes(passed=N_SEEDED, deselected=N_CASES - N_SEEDED)


def test_profile_option_reaches_the_check(pytester):
    target = variant_file(pytester, "tf32_conv")
    passed, failed = expected_outcomes("tf32_conv", "fp32")
    assert failed > 0
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock",
                                           "--resblock-profile", "fp32")
    result.assert_outcomes(passed=passed, failed=failed)
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock",
                                           "--resblock-profile", "tf32-conv")
    result.assert_outcomes(passed=N_CASES)


def test_without_impl_the_plugin_adds_nothing(pytester):
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest_subprocess("-q", "-p", "resblock")
    result.assert_outcomes(passed=1)


def test_bad_target_is_a_usage_error_not_an_internal_error(pytester):
    # BUG (conformance/pytest_plugin.py, pytest_collection_modifyitems): load_target's
    # TargetError escapes the hook, so pytest prints an INTERNALERROR traceback and exits
    # with status 3. Suggested: catch HarnessError there (or validate the target in
    # pytest_configure) and raise pytest.UsageError(str(e)): exit status 4 with one line.
    result = pytester.runpytest_subprocess("--resblock-impl", "no_colon_here", "-q",
                                           "-p", "resblock")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "expected MODULE:FUNCTION" in result.stderr.str()


def test_refusal_is_named_from_the_exception(pytester):
    """PyTorch's refusal at one value per channel: an error item that names the pitfall."""
    target = variant_file(pytester, "torch_one_value_per_channel")
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock",
                                           "-k", "n1-1x1")
    with GoldenFile(default_goldens()[0]) as gf:
        single = sum(e["n"] * e["h"] * e["w"] == 1 for e in gf.entries)
    assert single >= 3
    result.assert_outcomes(failed=single)
    out = result.stdout.str()
    assert "Expected more than 1 value per channel when training" in out
    fix = lookup("torch_one_value_per_channel").fix
    assert f"matches pitfall torch_one_value_per_channel: {fix}" in out


EXIT_AT_IMPORT = "import os\nos._exit(0)\ndef forward(x, params, stats):\n    pass\n"
EXIT_IN_FORWARD = ("import os\nfrom resblock.conformance.mistakes.variants import "
                   "make_forward\ngood = make_forward('correct_float32')\n"
                   "def forward(x, params, stats):\n"
                   "    if x.shape[0] == 1:\n        os._exit(0)\n"
                   "    return good(x, params, stats)\n")


def test_an_implementation_that_exits_at_import_is_a_usage_error(pytester):
    # Issue 20: in-process, os._exit(0) ended pytest with status 0 and no output.
    pytester.makepyfile(impl_exits=EXIT_AT_IMPORT)
    target = f"{pytester.path / 'impl_exits.py'}:forward"
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the worker process ended while loading the target (exit status 0)" in \
        result.stderr.str()


def test_an_implementation_that_exits_in_forward_fails_those_cases(pytester):
    pytester.makepyfile(impl_exits=EXIT_IN_FORWARD)
    target = f"{pytester.path / 'impl_exits.py'}:forward"
    with GoldenFile(default_goldens()[0]) as gf:
        batch1 = sum(e["n"] == 1 for e in gf.entries)
    assert 0 < batch1 < N_CASES
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock")
    result.assert_outcomes(passed=N_CASES - batch1, failed=batch1)
    assert "ended the worker process with exit status 0" in result.stdout.str()
    # --resblock-in-process keeps the old behaviour for a debugger, and says so
    result = pytester.runpytest_subprocess("--resblock-impl", target, "-q", "-p", "resblock",
                                           "--resblock-in-process", "--resblock-timeout", "5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--resblock-timeout needs the worker process" in result.stderr.str()


def test_cases_outside_the_profile_are_skipped(pytester):
    # spec 8.6: the stress-large cases' batch variances overflow float16
    target = variant_file(pytester, "float16_block")
    result = pytester.runpytest_subprocess(
        "--resblock-impl", target, "--resblock-profile", "fp16", "-q", "-rs", "-p", "resblock",
        "-k", "stress-large or seeded-normal-n1-4x4-f4-s0")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*outside the fp16 profile: batch variance of BatchNorm_0 "
                                 "reaches 1.05e+06 > float16's 65504*"])


# -- --resblock-onnx: an exported file gated as `resblock check --onnx` gates it ---------

def _require_deploy():
    """torch, onnx and onnxruntime (the [deploy] extra); CI sets RESBLOCK_REQUIRE_DEPLOY, so
    there a missing one fails, not skips. Looked up, not imported: pytester restores
    sys.modules after each test, and a C extension imported twice corrupts the process."""
    import importlib.util
    import os

    for m in ("torch", "onnx", "onnxruntime"):
        if importlib.util.find_spec(m) is None:
            if os.environ.get("RESBLOCK_REQUIRE_DEPLOY"):
                pytest.fail(f"{m} is not installed and RESBLOCK_REQUIRE_DEPLOY is set "
                            "(.ci/run): pip install -c constraints.txt -e '.[deploy]'")
            pytest.skip(f"{m} is not installed (pip install '.[deploy]')")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """Eval exports by examples/export_torch_onnx.py: correct, and with Keras' epsilon.
    Module-scoped, so torch is imported before any test's pytester snapshot of sys.modules
    (and never removed from it)."""
    import importlib.util
    import warnings

    _require_deploy()
    spec = importlib.util.spec_from_file_location("resblock_export_torch_onnx_plugin",
                                                  EXAMPLES / "export_torch_onnx.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    d = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, kw in (("block", {}), ("eps", {"eps": 1e-3})):
        paths[name] = str(d / f"{name}.onnx")
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
            warnings.simplefilter("ignore")
            ex.export(ex.trained_block(4, **kw), paths[name], 4, keep_batchnorm=True)
    return paths


def test_an_eval_export_passes_every_committed_case_with_resblock_onnx(pytester, onnx_files):
    result = pytester.runpytest_subprocess("--resblock-onnx", onnx_files["block"], "-q", "-p",
                                           "resblock")
    result.assert_outcomes(passed=N_CASES)  # read as --api inference, NCHW: the graph's
    assert result.ret == 0


def test_a_wrong_export_fails_and_names_its_pitfall_with_resblock_onnx(pytester, onnx_files):
    result = pytester.runpytest_subprocess("--resblock-onnx", onnx_files["eps"], "-q", "-p",
                                           "resblock")  # Keras' epsilon, 1e-3
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 30 and result.ret == pytest.ExitCode.TESTS_FAILED
    assert "matches pitfall inf_epsilon_1e3:" in result.stdout.str()


@pytest.mark.parametrize("extra, message", [
    (["--resblock-impl", "x.py:f"], "not both"),
    (["--resblock-api", "backward"], "drop --resblock-api seeded/backward"),
    (["--resblock-in-process"], "--resblock-in-process"),
])
def test_resblock_onnx_refuses_options_it_cannot_honour(pytester, extra, message):
    result = pytester.runpytest_subprocess("--resblock-onnx", "model.onnx", "-q", "-p",
                                           "resblock", *extra)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_an_unreadable_onnx_file_is_a_usage_error_naming_it(pytester):
    _require_deploy()  # without onnx the message says to install it instead
    bad = pytester.path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = pytester.runpytest_subprocess("--resblock-onnx", str(bad), "-q", "-p", "resblock")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--onnx {bad}: not a readable ONNX file" in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
