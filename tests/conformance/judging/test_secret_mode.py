"""Tests for conformance/judging/secret.py, the graders' mode (``resblock check --secret``).

The threat: an implementation that reads the golden files (golden_reader_impl.py returns
the stored oracle of the case whose input matches) conforms against the goldens, forward
and backward; in the graders' mode it does not, confined (it cannot read the files) or
not (the cases are not in them). A correct implementation conforms in both modes, and a
mistake is still named.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.conformance.judging import secret as secret_mode
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.mistakes.variants_backward import twin_backward
from resblock.conformance.running.invoke import InProcess
from resblock.conformance.running.worker import Worker
from resblock.errors import HarnessError
from resblock.golden.cli import default_goldens

HERE = Path(__file__).parent
READER = str(HERE / "golden_reader_impl.py")
EXAMPLES = HERE.parents[2] / "examples"
GOOD_FWD = f"{EXAMPLES / 'numpy_float32.py'}:forward"
GOOD_BWD = f"{EXAMPLES / 'numpy_backward.py'}:backward"
FEW = "n2 and 6x6 and f4"  # 7 cases of 3 input kinds in one group: quick
SEED = "5e" * 16


def secret_run(target, api="functional", keyword=FEW, confine=True, **kw):
    cfg = CheckConfig(target=target, api=api, keyword=keyword, **kw)
    return secret_mode.run_secret_check(cfg, Worker(target, api, "nhwc", confine=confine),
                                        seed=SEED)


def golden_run(target, api="functional", keyword=FEW):
    cfg = CheckConfig(target=target, api=api, keyword=keyword, diagnose=False)
    return run_check(cfg, Worker(target, api, "nhwc"), default_goldens())


@pytest.mark.parametrize("api", ["functional", "backward"])
def test_reading_the_goldens_conforms_against_them_and_not_in_the_graders_mode(api):
    target = f"{READER}:{'forward' if api == 'functional' else 'backward'}"
    normal = golden_run(target, api)
    assert normal.conforms and len(normal.results) == 7  # the threat, demonstrated
    confined = secret_run(target, api)
    assert not confined.conforms
    assert {r.status for r in confined.results} == {"error"}
    assert all("Permission denied" in r.message and "golden" in r.message
               for r in confined.results)
    assert "Landlock" in confined.secret["isolation"]
    unconfined = secret_run(target, api, confine=False)  # it reads them: no case is there
    assert not unconfined.conforms
    assert {r.status for r in unconfined.results} == {"fail"}
    assert "no filesystem confinement" in unconfined.secret["isolation"]


@pytest.mark.parametrize("target,api", [(GOOD_FWD, "functional"), (GOOD_BWD, "backward")])
def test_a_correct_implementation_conforms_in_the_graders_mode(target, api):
    run = secret_run(target, api, keyword=None)
    assert run.conforms, [(r.id, r.message) for r in run.results if r.status != "pass"]
    assert len(run.results) == len(secret_mode.grid()) == 57
    assert 0 < max(r.worst_score for r in run.results) < 1
    assert run.secret["seed"] == SEED and run.secret["cases"] == 57


def test_the_answer_is_computed_only_after_the_implementation_returned():
    seen = []

    def spy(x, params, batch_stats):
        seen.append(all(not gc.arrays.computed for gc in built))
        return make_forward("correct_float32")(x, params, batch_stats)

    built = []
    real = secret_mode.secret_case

    def recording(case, seed, grad):
        gc = real(case, seed, grad)
        built.append(gc)
        return gc

    cfg = CheckConfig(target="spy", keyword=FEW, diagnose=False)
    secret_mode.secret_case, saved = recording, secret_mode.secret_case
    try:
        run = secret_mode.run_secret_check(cfg, InProcess(spy, "functional", "nhwc"),
                                           seed=SEED)
    finally:
        secret_mode.secret_case = saved
    assert run.conforms and seen == [True] * 7
    assert all(gc.arrays.computed for gc in built)


def test_mistakes_are_still_named():
    cfg = CheckConfig(target="twin", keyword="n2 and 4x4 and f4 and normal")
    fn = make_forward("missing_residual")
    run = secret_mode.run_secret_check(cfg, InProcess(fn, "functional", "nhwc"), seed=SEED)
    assert not run.conforms and run.pitfalls["missing_residual"] == len(run.results) > 0

    def no_residual(x, params, batch_stats, y_bar):
        x_bar, p_bar = twin_backward("bwd_residual_dropped", x, params, batch_stats, y_bar)
        return x_bar.astype("float32"), {k: {n: a.astype("float32") for n, a in v.items()}
                                         for k, v in p_bar.items()}

    cfg = CheckConfig(target="twin", api="backward", keyword="n2 and 4x4 and f4 and normal")
    run = secret_mode.run_secret_check(cfg, InProcess(no_residual, "backward", "nhwc"),
                                       seed=SEED)
    assert not run.conforms and run.pitfalls["bwd_residual_dropped"] == len(run.results)


def test_the_seeded_api_is_refused_with_the_reason():
    cfg = CheckConfig(target="x", api="seeded")
    with pytest.raises(HarnessError, match="Flax's initialiser"):
        secret_mode.run_secret_check(cfg, InProcess(None, "seeded", "nhwc"))


def test_cli_prints_the_seed_after_the_run_and_the_report_records_it(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", "--impl", GOOD_FWD, "--secret", "-k", FEW,
                                   "--secret-seed", SEED, "--json-report", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "on 7 secret cases (graders' mode, preset default)" in res.output
    assert f"secret seed {SEED}" in res.output and "isolation: worker process" in res.output
    doc = json.loads(out.read_text())
    assert doc["goldens"] == [] and doc["secret"]["seed"] == SEED
    assert doc["secret"]["cases"] == 7 and doc["verdict"] == "conforms"


@pytest.mark.parametrize("extra,message", [
    (["--in-process"], "not isolated"), (["--api", "seeded"], "not supported"),
    (["--goldens", "x.h5"], "not read")])
def test_cli_refuses_what_the_graders_mode_cannot_check(extra, message):
    res = CliRunner().invoke(cli, ["check", "--impl", GOOD_FWD, "--secret", *extra])
    assert res.exit_code == 2 and message in res.output


def test_cli_refuses_a_malformed_seed_and_a_seed_without_secret():
    res = CliRunner().invoke(cli, ["check", "--impl", GOOD_FWD, "--secret",
                                   "--secret-seed", "nothex"])
    assert res.exit_code == 2 and "hexadecimal" in res.output
    res = CliRunner().invoke(cli, ["check", "--impl", GOOD_FWD, "--secret-seed", "00"])
    assert res.exit_code == 2 and "belong to --secret" in res.output
