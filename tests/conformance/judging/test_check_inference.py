"""``resblock check --api inference`` (spec section 12): the three admitted float32 forms,
Flax with ``use_running_average=True`` and a PyTorch ``eval()`` block conform on the
committed set; every inference pitfall's twin is rejected on committed cases and named;
contract mistakes are per-case errors; a file without the inference datasets is refused
in one line that says how to regenerate it; the program protocol, the pytest plugin and
the reports carry the mode.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants_inference import (
    FORMS,
    LOGIC_PITFALLS,
    make_infer,
)
from resblock.conformance.running.invoke import InProcess
from resblock.conformance.running.targets import load_target
from resblock.errors import GoldenFormatError

ROOT = Path(__file__).resolve().parents[3]
pytest_plugins = ["pytester"]
COMMITTED = [ROOT / "golden" / "default.h5"]


def _check(fn, layout="nhwc", goldens=COMMITTED, keyword=None, diagnose=True,
           profile="fp32"):
    cfg = CheckConfig(target="test", api="inference", layout=layout, keyword=keyword,
                      diagnose=diagnose, max_diagnosed=100, profile=profile)
    return run_check(cfg, InProcess(fn, "inference", layout), goldens)


@pytest.mark.parametrize("form", FORMS)
def test_every_admitted_form_conforms_on_the_committed_set(form):
    run = _check(make_infer(form), diagnose=False)
    assert run.conforms and len(run.results) == 59
    assert max(r.worst_score for r in run.results) < 0.25  # a wide margin


@pytest.mark.parametrize("target,layout,keyword", [
    ("examples/numpy_folded_inference.py:infer", "nhwc", None),
    ("examples/torch_eval_nchw.py:infer", "nchw", None),
])
def test_examples_conform_on_the_committed_set(target, layout, keyword):
    if "torch" in target:
        pytest.importorskip("torch")
    run = _check(load_target(str(ROOT / target)), layout, keyword=keyword)
    assert run.conforms, [(r.id, r.message) for r in run.results if r.status != "pass"]
    assert max(r.worst_score for r in run.results) < 0.25


def test_flax_use_running_average_conforms():
    pytest.importorskip("flax")
    from resblock.spec.reference import apply_inference

    def infer(x, params, batch_stats):
        return np.asarray(apply_inference(x, params, batch_stats))

    run = _check(infer, keyword="functional or stress", diagnose=False)
    assert run.conforms and len(run.results) == 35


@pytest.mark.parametrize("profile", ["fp32", "fp16"])
@pytest.mark.parametrize("pitfall", [p.name for p in LOGIC_PITFALLS])
def test_every_inference_pitfall_is_rejected_and_named(pitfall, profile):
    run = _check(make_infer(mistake=pitfall), profile=profile)
    failed = [r for r in run.results if r.status == "fail"]
    assert not run.conforms and len(failed) >= 10
    assert run.pitfalls.most_common(1)[0][0] == pitfall
    assert all(r.pitfall == pitfall for r in failed), {r.id: r.pitfall for r in failed}


def test_folded_bias_without_conv_bias_passes_where_the_conv_bias_is_zero():
    """The mistake of ultralytics/yolov3#807 is invisible where the conv bias is 0 (Flax's
    init: every seeded case) and caught where it is not (functional, stress)."""
    run = _check(make_infer(mistake="inf_fold_bias_without_conv_bias"), diagnose=False)
    by_family = {}
    for r in run.results:
        by_family.setdefault(r.family, set()).add(r.status)
    assert by_family["seeded"] == {"pass"}
    assert "fail" in by_family["functional"] and "fail" in by_family["stress"]


def test_training_block_is_named_batch_stats_at_inference():
    """The problem's training-mode block (its y alone) checked as an inference port is
    rejected and named: it normalises with the batch's statistics."""
    from resblock.conformance.mistakes.variants import Variant, make_forward

    train = make_forward(Variant())

    def infer(x, params, batch_stats):
        return train(x, params, batch_stats)[0]

    run = _check(infer, keyword="functional and n2")
    assert {r.status for r in run.results} == {"fail"}
    assert {r.pitfall for r in run.results} == {"inf_batch_stats"}


def test_contract_errors_are_per_case():
    def returns_stats(x, params, batch_stats):
        return np.zeros(x.shape, np.float32), batch_stats

    def float64(x, params, batch_stats):
        return np.zeros(x.shape, np.float64)

    for fn, words in ((returns_stats, "the output alone"), (float64, "float32")):
        run = _check(fn, keyword="functional and n2")
        assert {r.status for r in run.results} == {"error"}
        assert words in run.results[0].message


def test_nhwc_result_under_nchw_says_which_layout():
    nhwc = make_infer("subtract")

    def infer(x, params, batch_stats):  # takes NCHW/OIHW, returns NHWC
        p = {k: dict(v) for k, v in params.items()}
        for conv in ("Conv_0", "Conv_1"):
            p[conv]["kernel"] = np.transpose(p[conv]["kernel"], (2, 3, 1, 0))
        return nhwc(np.transpose(x, (0, 2, 3, 1)), p, batch_stats)

    run = _check(infer, layout="nchw", keyword="functional and n2 and 8x8")
    assert {r.status for r in run.results} == {"error"}
    assert "try --layout nhwc" in run.results[0].message


def test_golden_without_inference_data_is_refused_with_the_fix(smoke_golden):
    path, _ = smoke_golden
    with pytest.raises(GoldenFormatError, match=r"no inference datasets \(generated without "
                                                r"--inference\).*`resblock generate "
                                                r"--inference`"):
        _check(make_infer("subtract"), goldens=[path])


def test_committed_cases_hold_running_statistics_unlike_the_batch():
    """Spec 12.2: derived running statistics, a variance near 0 in BatchNorm_1, large
    means next to the spread; zero and non-zero conv biases both present."""
    from resblock.golden.reader import GoldenFile

    biases = set()
    with GoldenFile(COMMITTED[0]) as gf:
        for gc in gf.iter_cases():
            rs = gc.running_stats
            assert rs["BatchNorm_1"]["var"][0] == np.float32(1e-6)
            assert not np.array_equal(rs["BatchNorm_0"]["mean"],
                                      gc.batch_stats_in["BatchNorm_0"]["mean"])
            biases.add(bool(np.any(gc.params["Conv_0"]["bias"] != 0)))
            if gc.case.inputs != "zeroinit":  # BatchNorm_1 zeroed: y = relu(x) in both
                y = gc.arrays["inference/y"]
                assert not np.array_equal(y, gc.arrays["y"]) or not np.any(y)
    assert biases == {True, False}


def test_program_protocol_inference_mode(tmp_path):
    """``--exec`` with ``--api inference``: resblock-program-inference/1 (the running
    statistics in, ``y`` alone out)."""
    from resblock.conformance.running.invoke import Program
    from resblock.conformance.running.program_files import write_inputs

    prog = (f"{sys.executable} {ROOT / 'examples/numpy_inference_program.py'} "
            "{input} {output}")
    cfg = CheckConfig(target=prog, api="inference", keyword="n2 and 4x4", program=True)
    run = run_check(cfg, Program(prog, timeout=120, api="inference"), COMMITTED)
    assert run.conforms and len(run.results) >= 2
    x = np.zeros((1, 1, 1, 1), np.float32)
    p = {c: {"kernel": np.zeros((3, 3, 1, 1), np.float32), "bias": np.zeros(1, np.float32)}
         for c in ("Conv_0", "Conv_1")}
    p.update({b: {"scale": np.ones(1, np.float32), "bias": np.zeros(1, np.float32)}
              for b in ("BatchNorm_0", "BatchNorm_1")})
    s = {b: {"mean": np.zeros(1, np.float32), "var": np.ones(1, np.float32)}
         for b in ("BatchNorm_0", "BatchNorm_1")}
    inf = write_inputs(tmp_path / "i", [("a", x, p, s)], inference=True)
    assert inf["protocol"] == "resblock-program-inference/1"
    assert set(inf["cases"][0]["outputs"]) == {"y"}
    assert "BatchNorm_1/var" in inf["cases"][0]["inputs"]


def test_cli_inference_reports(tmp_path):
    from click.testing import CliRunner

    from resblock.cli import cli

    out, html = tmp_path / "r.json", tmp_path / "r.html"
    res = CliRunner().invoke(cli, [
        "check", "--api", "inference", "--in-process", "-k", "functional and n2",
        "--impl", str(ROOT / "examples/numpy_folded_inference.py:infer"),
        "--json-report", str(out), "--junit", str(tmp_path / "r.xml")])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["api"] == "inference"
    assert {t["name"] for c in rep["cases"] for t in c["tensors"]} == {"output"}
    assert (tmp_path / "r.xml").read_text().count("<testcase") >= 2
    pytest.importorskip("jinja2")
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from resblock.conformance.mistakes.variants_inference import "
                     "make_infer\n\ninfer = make_infer(mistake='inf_epsilon_1e3')\n")
    res = CliRunner().invoke(cli, [
        "check", "--api", "inference", "--in-process", "-k", "functional and n2",
        "--impl", f"{wrong}:infer", "--json-report", str(out), "--html", str(html)])
    assert res.exit_code == 1, res.output
    assert "matches pitfall: inf_epsilon_1e3" in res.output
    assert "use epsilon = 1e-5" in res.output
    rep = json.loads(out.read_text())
    assert [p["name"] for p in rep["pitfalls"]] == ["inf_epsilon_1e3"]
    detailed = [c for c in rep["cases"] if "details" in c]  # error maps of the worst cases
    assert detailed and all(c["details"]["maps"][0]["tensor"] == "output" for c in detailed)
    assert "inf_epsilon_1e3" in html.read_text()


def test_eval_mode_bn_fix_points_to_the_inference_api():
    from resblock.conformance.mistakes.pitfalls import lookup

    assert "--api inference" in lookup("eval_mode_bn").fix


def test_pytest_plugin_inference(pytester):
    """``pytest --resblock-api inference``: one test per committed case; an inference
    mistake fails with its pitfall's fix."""
    pytester.makepyfile(bad_inf="""
from resblock.conformance.mistakes.variants_inference import make_infer

infer = make_infer(mistake="inf_var_as_std")
""")
    args = ["--resblock-api", "inference", "-q", "-p", "resblock", "-k", "functional and n2"]
    good = pytester.runpytest_subprocess(
        "--resblock-impl", f"{ROOT / 'examples/numpy_folded_inference.py'}:infer", *args)
    assert good.ret == 0
    bad = pytester.runpytest_subprocess(
        "--resblock-impl", f"{pytester.path / 'bad_inf.py'}:infer", *args)
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    assert "matches pitfall inf_var_as_std" in bad.stdout.str()


def test_secret_mode_refuses_inference():
    from click.testing import CliRunner

    from resblock.cli import cli
    from resblock.conformance.judging.secret import check_config
    from resblock.errors import HarnessError

    with pytest.raises(HarnessError, match="--secret does not take --api inference"):
        check_config(CheckConfig(target="t", api="inference"))
    res = CliRunner().invoke(cli, ["check", "--secret", "--api", "inference", "--impl",
                                   str(ROOT / "examples/numpy_folded_inference.py:infer")])
    assert res.exit_code == 2 and "--api inference" in res.output


# Spec 12.4: the storage profiles. Float16's range ends at 65504: the two stress-large
# cases hold running variances of about 4e6, which a block that stores its statistics
# in float16 turns into inf (rejected, as the profile says).
OVERFLOW = {"stress-large-n1-8x8-f8-s0", "stress-large-n2-6x6-f4-s0"}


@pytest.mark.parametrize("store,own", [("float16", "fp16"), ("bfloat16", "bf16")])
def test_low_type_twins_conform_under_their_profile_only(store, own):
    twin = make_infer("folded", store=store)
    run = _check(twin, profile=own, diagnose=False)
    failed = {r.id for r in run.results if r.status != "pass"}
    assert failed == (OVERFLOW if store == "float16" else set())
    run = _check(twin, keyword="functional", profile="fp32")
    assert {r.status for r in run.results} == {"fail"}
    # the twin rounds as PyTorch's half() kernels (subtract first): a port that does is
    # named; the folded form's extra roundings are named on some cases only
    run = _check(make_infer("subtract", store=store), keyword="functional", profile="fp32")
    assert {r.pitfall for r in run.results} == {f"inf_{store}_block"}


@pytest.mark.parametrize("profile", ["fp16", "bf16"])
def test_float32_forms_and_flax_conform_under_the_storage_profiles(profile):
    for form in FORMS:
        run = _check(make_infer(form), profile=profile, diagnose=False)
        assert run.conforms and max(r.worst_score for r in run.results) < 0.01


@pytest.mark.parametrize("name,own,others", [
    ("infer_fp16_fused", "fp16", ("fp32",)),
    ("infer_bf16", "bf16", ("fp32", "tf32-conv")),
])
def test_torch_half_eval_blocks_conform_under_their_profile_and_fail_fp32(name, own,
                                                                          others):
    pytest.importorskip("torch")
    fn = load_target(str(ROOT / f"examples/torch_half_eval_nchw.py:{name}"))
    run = _check(fn, "nchw", profile=own, diagnose=False)
    assert run.conforms, [(r.id, r.worst_score) for r in run.results if r.status != "pass"]
    for prof in others:
        run = _check(fn, "nchw", keyword="functional", profile=prof)
        assert {r.status for r in run.results} == {"fail"}


def test_torch_model_half_eval_is_outside_fp16_only_where_the_variance_exceeds_float16():
    """``model.half().eval()`` overflows on the two cases whose running variances exceed
    float16's range: outside the fp16 profile (spec 12.4), skipped there; under fp32,
    where they are judged, the overflow fails and is named."""
    pytest.importorskip("torch")
    fn = load_target(str(ROOT / "examples/torch_half_eval_nchw.py:infer_fp16"))
    run = _check(fn, "nchw", profile="fp16")
    assert {r.id: r.status for r in run.results if r.status != "pass"} == \
        dict.fromkeys(OVERFLOW, "skip")
    run = _check(fn, "nchw", keyword=" or ".join(sorted(OVERFLOW)), profile="fp32")
    assert {r.id: (r.status, r.pitfall) for r in run.results} == \
        dict.fromkeys(OVERFLOW, ("fail", "inf_float16_block"))
