"""The library-default pitfalls (issue 9): fixes in each library's own words, and
PyTorch's refusal at one value per channel recognised from its real exception text."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.conformance.mistakes.diagnose import diagnose_error
from resblock.conformance.mistakes.pitfalls import lookup
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile

# pitfall -> words of the library's own API its fix must use
LIBRARY_WORDS = {
    "equinox_ema_mode": ("eqx.nn.BatchNorm", 'mode="batch"'),
    "haiku_zero_debias": ("hk.BatchNorm", "mean_ema", "counter"),
    "biased_running_var_converted": ("ONNX Runtime", "BatchNormalization", "running_var"),
    "torch_one_value_per_channel": ("BatchNorm2d", "N*H*W == 1"),
}


@pytest.mark.parametrize("name", sorted(LIBRARY_WORDS))
def test_fix_speaks_the_library_language(name):
    p = lookup(name)
    for word in LIBRARY_WORDS[name]:
        assert word in p.fix + p.explanation, (name, word)


def _single_value_case():
    with GoldenFile(default_goldens()[0]) as gf:
        e = next(e for e in gf.entries if e["n"] * e["h"] * e["w"] == 1)
        return gf.case(e["id"]).detached()


def test_real_pytorch_exception_is_recognised():
    torch = pytest.importorskip("torch")
    gc = _single_value_case()
    x = torch.from_numpy(np.transpose(gc.x, (0, 3, 1, 2)).copy())
    with pytest.raises(ValueError) as info:
        torch.nn.BatchNorm2d(x.shape[1], momentum=0.01).train()(x)
    message = f"raised ValueError: {info.value}"
    assert diagnose_error(gc, message) == "torch_one_value_per_channel"


def test_unrelated_errors_are_not_named():
    gc = _single_value_case()
    assert diagnose_error(gc, "raised RuntimeError: no 1x1 support") is None
    assert diagnose_error(gc, "raised ValueError: Expected") is None


def test_a_backward_check_gets_a_fix_about_gradients():
    """One value per channel in a PyTorch backward port: the fix says what the gradients
    are there, not how to update the running statistics (which --api backward does not
    check)."""
    from resblock.conformance.judging.compare import CaseResult
    from resblock.conformance.judging.runner import CheckConfig, RunResult
    from resblock.conformance.reporting.report import json_report, terminal_summary

    p = lookup("torch_one_value_per_channel")
    assert "running_mean" in p.fix_for("functional") and "running_mean" in p.fix
    back = p.fix_for("backward")
    assert "gradient" in back and "running" not in back
    run = RunResult(config=CheckConfig(target="t", api="backward"), goldens=[],
                    results=[CaseResult("stress-normal-n1-1x1-f8-s0", "stress", "error",
                                        "raised ValueError: Expected more than 1 value per "
                                        "channel when training", pitfall=p.name)])
    run.pitfalls[p.name] += 1
    assert f"fix: {back}" in terminal_summary(run)
    assert json_report(run)["pitfalls"][0]["fix"] == back
