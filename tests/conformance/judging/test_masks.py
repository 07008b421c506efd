"""conformance/judging/masks.py: ``resblock check --api backward`` resolves the ReLU masks
a correct port may flip (spec 10.4). A port that flipped an ambiguous mask conforms and
is told which; half a flip does not; the unbiased variance, which the stored budgets
admit at 2^14 values per channel because one flip moves the gradients as far, is
rejected and named there."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes.variants_backward import twin_backward
from resblock.conformance.running.invoke import InProcess
from resblock.generator.batched import derive_y_bars
from resblock.spec import backward as bwd
from resblock.spec.cases import Case

F32 = np.float32
J_BN1 = (0, 2, 3, 1)  # the planted relu1 element (N, H, W, C)


def _check(fn, goldens):
    cfg = CheckConfig(target="test", api="backward", layout="nhwc", diagnose=True,
                      max_diagnosed=10)
    return run_check(cfg, InProcess(fn, "backward", "nhwc"), goldens)


def _planted(cs):
    """Inputs whose relu1 pre-activation at J_BN1 is 1e-8-close to 0 (a float32 port may
    see either sign there): BatchNorm_0's bias cancels that element's value."""
    out = []
    for c in cs:
        r = np.random.default_rng(c.seed)
        f = c.features
        x = r.standard_normal((c.n, c.h, c.w, f)).astype(F32)
        p = {}
        for i in range(2):
            p[f"Conv_{i}"] = {"kernel": (r.standard_normal((3, 3, f, f)) / 6).astype(F32),
                              "bias": np.zeros(f, F32)}
            p[f"BatchNorm_{i}"] = {"scale": np.ones(f, F32), "bias": np.zeros(f, F32)}
        st = {b: {"mean": np.zeros(f, F32), "var": np.ones(f, F32)}
              for b in ("BatchNorm_0", "BatchNorm_1")}
        bn1 = bwd.backward(x, p, st, np.zeros_like(x)).forward.stages["bn1"]
        p["BatchNorm_0"]["bias"][J_BN1[-1]] = -F32(bn1[J_BN1])
        out.append((x, p, st))
    return out


@pytest.fixture(scope="module")
def planted_golden(tmp_path_factory):
    from resblock.generator.run import generate

    path = tmp_path_factory.mktemp("planted") / "planted.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        mp.setattr("resblock.generator.batched.derive_cases", _planted)
        mp.setattr("resblock.generator.batched.derive_cases_and_y_bars",  # what --grad uses
                   lambda cs: (_planted(cs), derive_y_bars(cs)))
        generate([Case("stress", "normal", 2, 6, 6, 3, 0)], path, grad=True, jobs=1)
    return path


def _flipped_port(fraction):
    """The float64 oracle backward with relu1's mask at J_BN1 flipped (``fraction`` 1) or
    half flipped (0.5), in float32."""
    def backward(x, params, batch_stats, y_bar):
        base = bwd.backward(x, params, batch_stats, y_bar)
        flip = bwd.backward(x, params, batch_stats, y_bar, flipped=[("bn1", J_BN1)])
        mix = lambda a, b: F32(a + fraction * (b - a))  # noqa: E731
        pbar = {k: {kk: mix(vv, flip.params_bar[k][kk]) for kk, vv in v.items()}
                for k, v in base.params_bar.items()}
        return mix(base.x_bar, flip.x_bar), pbar
    return backward


def test_a_flipped_ambiguous_mask_conforms_and_is_reported(planted_golden):
    res = _check(_flipped_port(1.0), [planted_golden])
    assert res.conforms
    (case,) = res.results
    assert "ReLU masks within 8 forward spreads of 0 resolved" in case.message
    assert f"relu1 at {J_BN1}" in case.message
    # the oracle's own masks conform too, with nothing flipped
    (case,) = _check(_flipped_port(0.0), [planted_golden]).results
    assert case.status == "pass" and "none flipped" in case.message


def test_half_a_flip_is_rejected(planted_golden):
    """Within the stored budgets (their mask term admits a whole flip), but no set of
    flips explains it."""
    (case,) = _check(_flipped_port(0.5), [planted_golden]).results
    assert case.status == "fail" and case.worst_score > 10


def test_unbiased_variance_at_2_14_values_per_channel_is_rejected_and_named(tmp_path):
    from resblock.generator.run import generate

    path = tmp_path / "g.h5"
    generate([Case("functional", "normal", 16, 32, 32, 8, 0)], path, grad=True, jobs=1)

    def unbiased(x, params, batch_stats, y_bar):
        x_bar, pbar = twin_backward("bwd_bn_unbiased_var_everywhere", x, params,
                                    batch_stats, y_bar)
        return F32(x_bar), {k: {kk: F32(vv) for kk, vv in v.items()} for k, v in pbar.items()}

    (case,) = _check(unbiased, [path]).results
    assert case.status == "fail"
    assert case.pitfall == "bwd_bn_unbiased_var_everywhere"
    assert "resolved" in case.message
