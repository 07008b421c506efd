"""Verdicts of the conformance run (conformance/judging/runner.py: ``judge`` and ``run_check``).
Whatever an in-process implementation does (raise, call sys.exit, return NaN, the wrong
shape, dtype or structure, write into its inputs), the case becomes a per-case ``error``
or ``fail`` with a message saying what to do, and the run goes on over every selected
case; ``judge`` also checks the optional intermediates (naming the first diverging stage)
and the seeded API's contract. The harness' own errors and the CLI's exit codes are tested
in test_runner_harness_errors.py, the worker process in test_runner_worker.py; both import
the shared helpers defined here.
"""

import sys
import types
import warnings

import numpy as np
import pytest

from resblock.conformance.judging.runner import CheckConfig, judge, run_check
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.running.invoke import InProcess, Outcome
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile
from resblock.spec import tolerance
from resblock.spec.cases import Case

GOLDENS = default_goldens()
GOOD = make_forward("correct_float32")

with GoldenFile(GOLDENS[0]) as _gf:
    IDS = list(_gf.ids)
N_CASES = len(IDS)
ONE_BY_ONE = [i for i in IDS if Case.from_id(i).h == 1 and Case.from_id(i).w == 1]
TWO_1X1 = "seeded-normal-n1-1x1-f4-s0 or seeded-normal-n1-1x1-f4-s1"


def run_fn(fn, **kw):
    """Run ``fn`` in-process over the committed goldens (no diagnosis: it is not tested here)."""
    kw.setdefault("diagnose", False)
    cfg = CheckConfig(target="test_runner:fn", **kw)
    return run_check(cfg, InProcess(fn, cfg.api, cfg.layout), GOLDENS)


def statuses(run):
    return {r.status for r in run.results}


def test_committed_goldens_hold_46_cases_of_three_families():
    # Not a hard-coded expectation elsewhere: the other tests read N_CASES from the file.
    assert N_CASES == len(set(IDS)) > 0
    assert {Case.from_id(i).family for i in IDS} == {"seeded", "functional", "stress"}
    assert ONE_BY_ONE and len(ONE_BY_ONE) < N_CASES


# --- in-process implementations that misbehave ---------------------------------------


def raising(x, params, batch_stats):
    raise RuntimeError("boom in my port")


def test_raising_implementation_is_an_error_on_every_case():
    run = run_fn(raising)
    assert len(run.results) == N_CASES
    assert statuses(run) == {"error"}
    msg = run.results[0].message
    assert msg.startswith("raised RuntimeError: boom in my port")
    assert "in raising" in msg  # the traceback's last frames point at the user's code
    assert not run.conforms


def raising_on_1x1(x, params, batch_stats):
    if x.shape[1] == 1 and x.shape[2] == 1:
        raise ValueError("1x1 inputs are not supported")
    return GOOD(x, params, batch_stats)


def test_the_run_continues_after_a_raising_case():
    run = run_fn(raising_on_1x1)
    assert len(run.results) == N_CASES
    errors = sorted(r.id for r in run.results if r.status == "error")
    assert errors == sorted(ONE_BY_ONE)
    assert run.count("pass") == N_CASES - len(ONE_BY_ONE)


def system_exit(x, params, batch_stats):
    sys.exit(3)


def test_system_exit_in_the_implementation_is_a_case_error():
    # BUG (conformance/running/invoke.py, call_once): only ``Exception`` is caught, so a port that
    # calls sys.exit() ends the whole run; in the CLI, SystemExit(1) even reads as
    # "does not conform" with no report. Expected: a per-case error like any exception.
    run = run_fn(system_exit, keyword="seeded-normal-n1-1x1")
    assert statuses(run) == {"error"}
    assert "SystemExit" in run.results[0].message


def nan_output(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    return np.full_like(y, np.nan), stats


def test_nan_output_fails_every_case_with_infinite_score():
    run = run_fn(nan_output)
    assert len(run.results) == N_CASES
    assert statuses(run) == {"fail"}
    for r in run.results:
        out = r.tensors[0]
        assert out.name == "output" and not out.ok
        assert out.n_bad == out.size
        assert r.worst_score == np.inf and np.isnan(out.got)
        assert all(t.ok for t in r.tensors[1:])  # the running stats are right


def test_nan_output_message_names_the_non_finite_values():
    # BUG (conformance/judging/runner.py, judge): the message is only "out of tolerance: output",
    # although conformance/mistakes/variants.py promises that NaN "the runner reports as non-finite
    # output". Suggested: "output has 64 non-finite values (NaN/Inf)" before the bound.
    run = run_fn(nan_output, keyword="seeded-normal-n1-1x1-f4-s0")
    msg = run.results[0].message.lower()
    assert "nan" in msg or "non-finite" in msg


def nchw_output(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)), stats


def test_nchw_output_under_nhwc_suggests_layout_nchw():
    run = run_fn(nchw_output)
    assert len(run.results) == N_CASES
    n_shape_differs = 0
    for r in run.results:
        c = Case.from_id(r.id)
        nhwc, nchw = (c.n, c.h, c.w, c.features), (c.n, c.features, c.h, c.w)
        if nhwc != nchw:
            n_shape_differs += 1
            assert r.status == "error", r.id
            assert r.message == (f"output y has shape {nchw}, expected {nhwc} "
                                 "(is the implementation NCHW? try --layout nchw)")
        else:
            # Same shape both ways (e.g. 4x4 with 4 features): only the values can tell.
            assert r.status in ("fail", "pass"), r.id
    assert n_shape_differs > N_CASES // 2


def float64_output(x, params, batch_stats):
    y, stats = make_forward("correct_float64", keep_dtype=True)(x, params, batch_stats)
    return y, {k: {kk: vv.astype(np.float32) for kk, vv in v.items()} for k, v in stats.items()}


def float64_stats(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    stats["BatchNorm_0"]["mean"] = stats["BatchNorm_0"]["mean"].astype(np.float64)
    return y, stats


def test_float64_results_are_contract_errors():
    run = run_fn(float64_output)
    assert statuses(run) == {"error"} and len(run.results) == N_CASES
    assert run.results[0].message == ("output y has dtype float64; the contract is float32 "
                                      "(cast with .astype(np.float32) or .float())")
    run = run_fn(float64_stats, keyword="seeded")
    assert statuses(run) == {"error"}
    assert run.results[0].message.startswith("batch_stats BatchNorm_0/mean has dtype float64")


def only_y(x, params, batch_stats):
    return GOOD(x, params, batch_stats)[0]


def four_items(x, params, batch_stats):
    return (*GOOD(x, params, batch_stats), None, None)


def as_dict(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    return {"y": y, "batch_stats": stats}


@pytest.mark.parametrize("fn, kind", [(only_y, "ndarray"), (four_items, "tuple"),
                                      (as_dict, "dict")])
def test_result_that_is_not_a_pair_is_an_error(fn, kind):
    run = run_fn(fn)
    assert statuses(run) == {"error"} and len(run.results) == N_CASES
    assert run.results[0].message == (
        f"forward returned {kind}; expected a tuple (y, new_batch_stats) or "
        "(y, new_batch_stats, intermediates)")


def none_output(x, params, batch_stats):
    return None, GOOD(x, params, batch_stats)[1]


def test_none_output_is_an_error():
    run = run_fn(none_output, keyword="seeded")
    assert statuses(run) == {"error"}
    assert run.results[0].message.startswith("output y is a NoneType, which is not an array")


def missing_var(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    del stats["BatchNorm_1"]["var"]
    return y, stats


def test_stats_missing_a_leaf_is_an_error_naming_it():
    run = run_fn(missing_var)
    assert statuses(run) == {"error"} and len(run.results) == N_CASES
    assert run.results[0].message == ("new batch_stats lacks BatchNorm_1/var; got "
                                      "{'BatchNorm_0': ['mean', 'var'], 'BatchNorm_1': ['mean']}")


def mapping_proxy(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    return y, types.MappingProxyType(stats)


def test_read_only_mapping_for_stats_is_an_error():
    # A frozen-dict look-alike that is neither a dict nor has .unfreeze(): rejected with a
    # message naming the expected structure (not a crash deep inside the comparison).
    run = run_fn(mapping_proxy)
    assert statuses(run) == {"error"} and len(run.results) == N_CASES
    assert run.results[0].message.startswith(
        "new batch_stats is a mappingproxy, expected a dict {'BatchNorm_0': {'mean', 'var'}")


def test_flax_frozen_dict_stats_are_accepted():
    core = pytest.importorskip("flax.core")

    def frozen(x, params, batch_stats):
        y, stats = GOOD(x, params, batch_stats)
        return y, core.FrozenDict(stats)

    run = run_fn(frozen)
    assert statuses(run) == {"pass"} and len(run.results) == N_CASES


def writes_x_in_place(x, params, batch_stats):
    x += 1.0
    return GOOD(x, params, batch_stats)


def writes_stats_in_place(x, params, batch_stats):
    batch_stats["BatchNorm_0"]["mean"] *= 0.99
    return GOOD(x, params, batch_stats)


@pytest.mark.parametrize("fn", [writes_x_in_place, writes_stats_in_place])
def test_in_place_writes_hit_read_only_inputs(fn):
    run = run_fn(fn)
    assert statuses(run) == {"error"} and len(run.results) == N_CASES
    msg = run.results[0].message
    assert msg.startswith("raised ValueError: output array is read-only (inputs are read-only: "
                          "the implementation must not modify them in place)")


def torch_writes_x(x, params, batch_stats):
    import torch

    y, stats = GOOD(x, params, batch_stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "The given NumPy array is not writable"
        torch.from_numpy(x).add_(1.0)  # bypasses the read-only flag
    return y, stats


def unlocks_params(x, params, batch_stats):
    y, stats = GOOD(x, params, batch_stats)
    b = params["Conv_0"]["bias"]
    b.flags.writeable = True  # allowed: the copy owns its memory
    b[0] += 1.0
    return y, stats


def test_input_mutation_through_torch_is_reported():
    pytest.importorskip("torch")
    run = run_fn(torch_writes_x)
    assert statuses(run) == {"fail"} and len(run.results) == N_CASES
    assert run.results[0].message == "modified its inputs in place: x"
    assert all(t.ok for r in run.results for t in r.tensors)  # only the mutation fails it


def test_input_mutation_of_params_is_reported_and_goldens_stay_intact():
    run = run_fn(unlocks_params)
    assert statuses(run) == {"fail"}
    assert run.results[0].message == "modified its inputs in place: params/Conv_0/bias"
    # The implementation only ever saw copies: the goldens still pass a correct block.
    assert run_fn(GOOD).conforms


# --- judge: intermediates, seeded contract --------------------------------------------


@pytest.fixture(scope="module")
def gc():
    with GoldenFile(GOLDENS[0]) as gf:
        yield gf.case("functional-normal-n2-4x4-f4-s0")


STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum")


def _result_with_stages(gc, layout, perturb=None, variant="correct_float32"):
    y, stats = make_forward(variant)(gc.x, gc.params, gc.batch_stats_in)
    inter = {s: gc.arrays[f"oracle/stages/{s}"].astype(np.float32) for s in STAGES}
    if perturb:
        inter[perturb] = inter[perturb] + 1.0
    if layout == "nchw":
        y = y.transpose(0, 3, 1, 2)
        inter = {k: v.transpose(0, 3, 1, 2) for k, v in inter.items()}
    return y, stats, inter


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_judge_with_correct_intermediates(gc, layout):
    cfg = CheckConfig(target="t", layout=layout)
    res = judge(gc, Outcome(result=_result_with_stages(gc, layout)), cfg,
                tolerance.profile("fp32"))
    assert res.status == "pass" and res.stage is None


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_judge_names_the_first_diverging_stage(gc, layout):
    cfg = CheckConfig(target="t", layout=layout)
    result = _result_with_stages(gc, layout, perturb="sum", variant="missing_residual")
    res = judge(gc, Outcome(result=result), cfg, tolerance.profile("fp32"))
    assert res.status == "fail" and res.stage == "sum"
    # The residual is added after BatchNorm_1: its running stats are still right.
    assert res.message == "out of tolerance: output"


def test_judge_rejects_a_non_dict_third_value(gc):
    y, stats = GOOD(gc.x, gc.params, gc.batch_stats_in)
    res = judge(gc, Outcome(result=(y, stats, [1, 2])), CheckConfig(target="t"),
                tolerance.profile("fp32"))
    assert res.status == "error"
    assert res.message == "the optional third return value must be a dict {stage: array}"


def seeded_4d(seed, x, features):
    return np.zeros((1,) + x.shape, np.float32)


def test_seeded_api_checks_only_seeded_cases_and_the_1d_shape():
    run = run_fn(seeded_4d, api="seeded")
    seeded = [i for i in IDS if i.startswith("seeded-")]
    assert sorted(r.id for r in run.results) == sorted(seeded)
    assert statuses(run) == {"error"}
    r = next(r for r in run.results if r.id == "seeded-normal-n1-4x4-f4-s0")
    assert r.message == "output has shape (1, 4, 4, 4), expected (64,)"
