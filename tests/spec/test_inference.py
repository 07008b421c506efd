"""Tests of spec/inference.py: the inference block's float64 oracle, its per-element
budgets and its spreads, judged with the rule of spec section 8 against float32 ports in
each admitted form (subtract first, folded affine, folded into the convolution), Flax in
eval mode, and the deployment mistakes of issue 18 that must not conform."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.spec import inference, tolerance
from resblock.spec.constants import EPSILON

F32 = np.float32


def _inputs(n=2, h=6, w=6, f=4, seed=0):
    """A case whose running statistics differ from the batch's: large means, a variance
    near 0, non-zero conv biases (so folding mistakes show)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, h, w, f)).astype(F32)
    params, stats = {}, {}
    for i in range(2):
        params[f"Conv_{i}"] = {
            "kernel": (r.standard_normal((3, 3, f, f)) / np.sqrt(9 * f)).astype(F32),
            "bias": r.uniform(-1, 1, f).astype(F32)}
        params[f"BatchNorm_{i}"] = {"scale": r.uniform(0.5, 2.0, f).astype(F32),
                                    "bias": r.uniform(-0.5, 0.5, f).astype(F32)}
        var = r.uniform(0.05, 3.0, f)
        var[0] = 1e-4
        stats[f"BatchNorm_{i}"] = {"mean": (3.0 * r.standard_normal(f)).astype(F32),
                                   "var": var.astype(F32)}
    return x, params, stats


def _conv32(a, k, b):
    n, h, w, _ = a.shape
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]), F32)
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ k[i, j]
    return out + b


def _port(x, p, s, form="subtract", *, eps=1e-5, stats=None, fold_bias_without_conv=False,
          var_as_std=False, kernel_scaled_on_input=False):
    """A float32 NumPy inference block in one of the admitted forms, or wrong on purpose."""
    a = x
    for i in range(2):
        k, b = p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"]
        scale, beta = p[f"BatchNorm_{i}"]["scale"], p[f"BatchNorm_{i}"]["bias"]
        mean, var = s[f"BatchNorm_{i}"]["mean"], s[f"BatchNorm_{i}"]["var"]
        if stats == "batch":
            c = _conv32(a, k, b)
            mean, var = c.mean(axis=(0, 1, 2)), c.var(axis=(0, 1, 2))
        denom = (var + F32(eps)) if var_as_std else np.sqrt(var + F32(eps))
        g = (scale / denom).astype(F32)
        if form == "conv":
            kg = k * (g[:, None] if kernel_scaled_on_input else g)
            b_fold = ((F32(0) if fold_bias_without_conv else b) - mean) * g + beta
            z = _conv32(a, kg.astype(F32), b_fold.astype(F32))
        else:
            c = _conv32(a, k, b)
            z = c * g + (beta - mean * g) if form == "affine" else (c - mean) * g + beta
        z = z.astype(F32)
        a = np.maximum(z, 0) if i == 0 else z
    return np.maximum(a + x, 0)


def _scores(x, p, s, y):
    """(worst per-element score, aggregate score) of ``y`` against the oracle."""
    res = inference.forward(x, p, s)
    b = inference.budgets(x, p, s, res.stages)
    sig, sig_c = inference.spreads(x, p, s, res.stages)
    prof = tolerance.profile("fp32")
    element = tolerance.max_score(y, res.y, b.bound("output", prof.u_conv))
    agg = tolerance.aggregate_score(y, res.y, sig["output"], sig_c["output"], prof.u_conv,
                                    x.shape[-1])
    return element, agg


def test_oracle_is_the_inference_formula():
    x, p, s = _inputs()
    res = inference.forward(x, p, s)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    from resblock.spec.oracle import conv3x3

    a = f64(x)
    for i in range(2):
        c = conv3x3(a, f64(p[f"Conv_{i}"]["kernel"]), f64(p[f"Conv_{i}"]["bias"]))
        st = s[f"BatchNorm_{i}"]
        z = ((c - f64(st["mean"])) / np.sqrt(f64(st["var"]) + EPSILON)
             * f64(p[f"BatchNorm_{i}"]["scale"]) + f64(p[f"BatchNorm_{i}"]["bias"]))
        a = np.maximum(z, 0) if i == 0 else z
    np.testing.assert_allclose(res.y, np.maximum(a + x, 0), rtol=1e-13, atol=1e-13)
    assert set(res.stages) == set(inference.STAGES)
    # the running statistics are used: the batch's would give another output
    assert not np.allclose(res.y, _port(x, p, s, stats="batch"), atol=1e-2)


@pytest.mark.parametrize("form", ["subtract", "affine", "conv"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_admitted_float32_form_conforms(form, seed):
    x, p, s = _inputs(seed=seed)
    element, agg = _scores(x, p, s, _port(x, p, s, form))
    assert element <= 1.0 and agg <= 1.0
    # and with room to spare, not at the edge: the budgets are S = 8 spreads wide
    assert element < 0.5


def test_flax_eval_mode_conforms():
    jax = pytest.importorskip("jax")
    import flax.linen as nn
    import jax.numpy as jnp

    from resblock.spec.reference import full_precision

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.Conv(x.shape[-1], (3, 3), padding="SAME")(x)
            y = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5)(y))
            y = nn.Conv(x.shape[-1], (3, 3), padding="SAME")(y)
            y = nn.BatchNorm(use_running_average=True, epsilon=1e-5)(y)
            return nn.relu(y + x)

    x, p, s = _inputs(seed=3)
    with full_precision():
        y = Block().apply({"params": jax.tree.map(jnp.asarray, p),
                           "batch_stats": jax.tree.map(jnp.asarray, s)}, jnp.asarray(x))
    element, agg = _scores(x, p, s, np.asarray(y))
    assert element <= 1.0 and agg <= 1.0


@pytest.mark.parametrize("mistake", [
    dict(form="conv", fold_bias_without_conv=True),
    dict(stats="batch"),
    dict(eps=1e-3),
    dict(var_as_std=True),
    dict(form="conv", kernel_scaled_on_input=True),
])
def test_deployment_mistakes_do_not_conform(mistake):
    x, p, s = _inputs(seed=4)
    element, agg = _scores(x, p, s, _port(x, p, s, **mistake))
    assert max(element, agg) > 1.0


def test_budget_grows_with_the_gain_of_a_near_zero_variance():
    """A running variance near 0 makes g = scale / sqrt(var + eps) large: the budget of
    that channel scales with it (the error of c is amplified), and the others do not."""
    x, p, s = _inputs(seed=5)
    res = inference.forward(x, p, s)
    e, _ = inference.raw_budgets(x, p, s, res.stages)
    g = np.abs(inference.bn_gain(p["BatchNorm_0"]["scale"], s["BatchNorm_0"]["var"]))
    per_channel = e["bn1"].mean(axis=(0, 1, 2)) / e["conv1"].mean(axis=(0, 1, 2))
    assert np.argmax(per_channel) == 0 == np.argmax(g)
    assert per_channel[0] > 10 * np.median(per_channel[1:])


def test_spread_bounds_the_rms_error_of_float32_ports():
    """Over many cases, a float32 port's root-mean-square normalised error stays below 1
    (the spread is an upper estimate of each element's RMS error)."""
    worst = 0.0
    for seed in range(6):
        x, p, s = _inputs(n=2, h=8, w=8, f=8, seed=10 + seed)
        res = inference.forward(x, p, s)
        sig, _ = inference.spreads(x, p, s, res.stages)
        for form in ("subtract", "affine", "conv"):
            d = _port(x, p, s, form).astype(np.float64) - res.y
            worst = max(worst, float(np.sqrt(np.mean(np.square(d / sig["output"])))))
    assert 0.0 < worst < 1.0
