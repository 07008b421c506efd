"""``resblock check --api backward`` (spec section 10): the recipes conform on the committed
set, every backward pitfall's twin is rejected on at least two committed cases and named,
contract mistakes are per-case errors, and a forward-only golden file is refused in one
line that says how to regenerate it.
"""

from pathlib import Path

import numpy as np
import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants_backward import (
    BACKWARD_PITFALLS,
    applies,
    lookup,
    twin_backward,
)
from resblock.conformance.running.invoke import InProcess
from resblock.conformance.running.targets import load_target
from resblock.errors import GoldenFormatError
from resblock.generator.batched import derive_y_bars
from resblock.spec.cases import Case

ROOT = Path(__file__).resolve().parents[3]
pytest_plugins = ["pytester"]
COMMITTED = [ROOT / "golden" / "default.h5"]
# Every backward pitfall is rejected by the committed set since spec 3.0: the ReLU
# derivative at 0 by its zero-init-residual and dead-channel cases (spec 10.4).
NOT_IN_COMMITTED: set = set()


def _check(fn, layout="nhwc", goldens=COMMITTED, keyword=None, diagnose=True):
    cfg = CheckConfig(target="test", api="backward", layout=layout, keyword=keyword,
                      diagnose=diagnose, max_diagnosed=100)
    return run_check(cfg, InProcess(fn, "backward", layout), goldens)


@pytest.mark.parametrize("target,layout,keyword", [
    ("examples/numpy_backward.py:backward", "nhwc", None),
    ("examples/torch_autograd_backward.py:backward", "nchw", None),
    ("examples/jax_vjp_backward.py:backward", "nhwc", "n2 or n4 or 1x1"),
])
def test_recipes_conform_on_the_committed_set(target, layout, keyword):
    if "torch" in target:
        pytest.importorskip("torch")
    run = _check(load_target(str(ROOT / target)), layout, keyword=keyword)
    assert run.conforms, [(r.id, r.message) for r in run.results if r.status != "pass"]
    assert max(r.worst_score for r in run.results) < 0.25  # a wide margin


def _twin_impl(name):
    def backward(x, params, batch_stats, y_bar):
        with np.errstate(all="ignore"):
            x_bar, pbar = twin_backward(name, x, params, batch_stats, y_bar)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return f32(x_bar), {k: {kk: f32(vv) for kk, vv in v.items()} for k, v in pbar.items()}
    return backward


def test_correct_twin_conforms():
    assert _check(_twin_impl(None), diagnose=False).conforms


@pytest.mark.parametrize("pitfall", [p.name for p in BACKWARD_PITFALLS])
def test_every_backward_pitfall_is_rejected_and_named(pitfall):
    run = _check(_twin_impl(pitfall))
    failed = [r for r in run.results if r.status == "fail"]
    if pitfall in NOT_IN_COMMITTED:
        assert not failed
        return
    assert len(failed) >= 2
    assert run.pitfalls.most_common(1)[0][0] == pitfall
    # named wherever its twin applies (the unbiased variance is NaN at N*H*W = 1)
    p = lookup(pitfall)
    named = [r for r in failed if applies(p, Case.from_id(r.id))]
    assert len(named) >= 2
    assert all(r.pitfall == pitfall for r in named), {r.id: r.pitfall for r in named}


def test_contract_errors_are_per_case():
    def wrong(x, params, batch_stats, y_bar):
        return np.zeros(x.shape, np.float32)  # x_bar only

    def flat_keys(x, params, batch_stats, y_bar):
        return np.zeros(x.shape, np.float32), {"Conv_0/kernel": 0}

    for fn, words in ((wrong, "expected a tuple (x_bar, params_bar)"),
                      (flat_keys, "nested like params")):
        run = _check(fn, keyword="n2 and 4x4")
        assert {r.status for r in run.results} == {"error"}
        assert words in run.results[0].message


def test_forward_only_golden_is_refused_with_the_fix(smoke_golden):
    path, _ = smoke_golden
    with pytest.raises(GoldenFormatError, match=r"no gradient datasets \(generated without "
                                                r"--grad\).*`resblock generate --grad`"):
        _check(_twin_impl(None), goldens=[path])


def test_cli_backward_reports(tmp_path):
    import json

    from click.testing import CliRunner

    from resblock.cli import cli

    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, [
        "check", "--api", "backward", "--in-process", "-k", "functional and n2",
        "--impl", str(ROOT / "examples/numpy_backward.py:backward"),
        "--json-report", str(out), "--junit", str(tmp_path / "r.xml")])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["api"] == "backward"
    names = {t["name"] for c in rep["cases"] for t in c["tensors"]}
    assert {"x_bar", "Conv_0/kernel_bar", "BatchNorm_1/bias_bar"} <= names
    assert (tmp_path / "r.xml").read_text().count("<testcase") >= 2


@pytest.fixture(scope="module")
def stress_grad_golden(tmp_path_factory):
    """A generated stress grid with gradients: every input kind, 1 to 256 values per
    channel, batch 1 and 4 (tiny, low-amplitude, large and offset channels)."""
    from resblock.generator.grid import axes_cases
    from resblock.generator.run import generate

    path = tmp_path_factory.mktemp("stress") / "stress.h5"
    cases = axes_cases(families=["stress"], inputs=["normal", "lowamp", "large", "offset"],
                       batches=[1, 4], shapes=[(1, 1), (2, 2), (8, 8)], features=[3],
                       seeds=[5])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        generate(cases, path, grad=True)
    return path


@pytest.mark.parametrize("target,layout", [
    ("examples/numpy_backward.py:backward", "nhwc"),
    ("examples/torch_autograd_backward.py:backward", "nchw"),
])
def test_recipes_conform_on_a_generated_stress_grid(stress_grad_golden, target, layout):
    if "torch" in target:
        pytest.importorskip("torch")
    run = _check(load_target(str(ROOT / target)), layout, goldens=[stress_grad_golden])
    assert run.conforms and len(run.results) == 24
    assert max(r.worst_score for r in run.results) < 0.25


def test_program_protocol_backward_mode(tmp_path):
    """``--exec`` with ``--api backward``: resblock-program-backward/1 (y_bar in, the
    gradients out); the forward protocol is unchanged."""
    import sys

    from resblock.conformance.running.invoke import Program
    from resblock.conformance.running.program_files import write_inputs

    prog = f"{sys.executable} {ROOT / 'examples/numpy_backward_program.py'} {{input}} {{output}}"
    cfg = CheckConfig(target=prog, api="backward", keyword="n2 and 4x4", program=True)
    run = run_check(cfg, Program(prog, timeout=120, api="backward"), COMMITTED)
    assert run.conforms and len(run.results) >= 2
    assert max(r.worst_score for r in run.results) < 0.25
    x = np.zeros((1, 1, 1, 1), np.float32)
    p = {c: {"kernel": np.zeros((3, 3, 1, 1), np.float32), "bias": np.zeros(1, np.float32)}
         for c in ("Conv_0", "Conv_1")}
    p.update({b: {"scale": np.ones(1, np.float32), "bias": np.zeros(1, np.float32)}
              for b in ("BatchNorm_0", "BatchNorm_1")})
    s = {b: {"mean": np.zeros(1, np.float32), "var": np.ones(1, np.float32)}
         for b in ("BatchNorm_0", "BatchNorm_1")}
    fwd = write_inputs(tmp_path / "f", [("a", x, p, s)])
    assert fwd["protocol"] == "resblock-program/1" and "y_bar" not in fwd["cases"][0]["inputs"]
    bwd = write_inputs(tmp_path / "b", [("a", x, p, s, x)], backward=True)
    assert bwd["protocol"] == "resblock-program-backward/1"
    assert set(bwd["cases"][0]["outputs"]) == {
        "x_bar", "Conv_0/kernel_bar", "Conv_0/bias_bar", "BatchNorm_0/scale_bar",
        "BatchNorm_0/bias_bar", "Conv_1/kernel_bar", "Conv_1/bias_bar",
        "BatchNorm_1/scale_bar", "BatchNorm_1/bias_bar"}


def test_failure_lines_name_the_index_axes():
    from resblock.conformance.reporting.report import tensor_line

    run = _check(_twin_impl("bwd_conv_kernel_grad_flipped"), keyword="functional and n2",
                 diagnose=False)
    lines = [tensor_line(t, "nhwc") for r in run.results for t in r.failing_tensors]
    assert any(line.startswith("Conv_1/kernel_bar:") and "[hwio]=" in line for line in lines)


def test_pytest_plugin_backward(pytester):
    """``pytest --resblock-api backward``: one test per committed case; a backward mistake
    fails with its pitfall's fix."""
    pytester.makepyfile(bad_bw="""
import numpy as np
from resblock.conformance.mistakes.variants_backward import twin_backward

def backward(x, params, batch_stats, y_bar):
    xb, pb = twin_backward("bwd_residual_dropped", x, params, batch_stats, y_bar)
    f = lambda a: np.asarray(a, np.float32)
    return f(xb), {k: {kk: f(v) for kk, v in d.items()} for k, d in pb.items()}
""")
    args = ["--resblock-api", "backward", "-q", "-p", "resblock", "-k", "functional and n2"]
    good = pytester.runpytest_subprocess(
        "--resblock-impl", f"{ROOT / 'examples/numpy_backward.py'}:backward", *args)
    assert good.ret == 0
    bad = pytester.runpytest_subprocess(
        "--resblock-impl", f"{pytester.path / 'bad_bw.py'}:backward", *args)
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    assert "matches pitfall bwd_residual_dropped" in bad.stdout.str()


@pytest.fixture(scope="module")
def twin_golden(tmp_path_factory):
    """A golden file of hand-made cases that see ReLU at exactly 0 with N*H*W > 1: two
    identical 1x1 samples with BatchNorm biases 0 (the committed set has none, DESIGN 6).
    ``generate(grad=True)`` computes them (reference VJP, oracle, budgets) from these
    inputs instead of derived ones."""
    from resblock.generator.run import generate

    cases = [Case("stress", "normal", 2, 1, 1, 3, s) for s in (0, 1)]

    def twin_inputs(cs):
        out = []
        for c in cs:
            rng = np.random.default_rng(c.seed)
            x = np.repeat(rng.standard_normal((1, 1, 1, 3)).astype(np.float32), 2, axis=0)
            p = {v: {"kernel": (rng.standard_normal((3, 3, 3, 3)) / 5).astype(np.float32),
                     "bias": np.zeros(3, np.float32)} for v in ("Conv_0", "Conv_1")}
            p.update({b: {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)}
                      for b in ("BatchNorm_0", "BatchNorm_1")})
            st = {b: {"mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}
                  for b in ("BatchNorm_0", "BatchNorm_1")}
            out.append((x, p, st))
        return out

    path = tmp_path_factory.mktemp("twin") / "twin.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        mp.setattr("resblock.generator.batched.derive_cases", twin_inputs)
        mp.setattr("resblock.generator.batched.derive_cases_and_y_bars",  # what --grad uses
                   lambda cs: (twin_inputs(cs), derive_y_bars(cs)))
        generate(cases, path, grad=True, jobs=1)
    return path


def test_relu_at_zero_on_a_twin_case(twin_golden):
    """Flax's BatchNorm gives exactly 0 on the twin channels, PyTorch's CPU F.batch_norm
    about 1e-7 (so its ReLU passes the cotangent): both are correct float32 forwards, so
    both conventions conform there; every recipe conforms."""
    assert _check(_twin_impl("bwd_relu_one_at_zero"), goldens=[twin_golden]).conforms
    for target, layout in (("examples/numpy_backward.py:backward", "nhwc"),
                           ("examples/torch_autograd_backward.py:backward", "nchw"),
                           ("examples/jax_vjp_backward.py:backward", "nhwc")):
        assert _check(load_target(str(ROOT / target)), layout, goldens=[twin_golden]).conforms
