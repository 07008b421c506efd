"""The block in inference mode: its float64 oracle, per-element budgets and spreads.

A deployed block normalises with the running statistics it is given instead of the
batch's (Flax ``use_running_average=True``, PyTorch ``eval()``, every inference engine)::

    g = scale / sqrt(running_var + 1e-5)                    # per channel
    bn_inf(c) = (c - running_mean) * g + beta

and returns only ``y`` (no statistics are updated). Engines evaluate it in one of three
float32 forms, all admitted: subtract first (the formula above), folded into a per-channel
affine map (``c * g + (beta - running_mean * g)``), or folded into the convolution
before it (``conv(a, k * g) + ((b - running_mean) * g + beta)``, what ONNX Runtime,
OpenVINO, TensorRT and ``torch.fx`` fusion do).

There are no batch reductions, so every error is local to its element and its channel.
The budget of a BatchNorm output (first order in ``u = 2^-24``; ``e_c`` the budget of
its input, ``a`` and ``k`` the input and kernel of the convolution before it)::

    |g| e_c                                  the input's error, scaled
    + |(c - rm) g| r_g                       g's own rounding, r_g = 4.5 u + d_eps / (2 (rv + eps))
    + u (2 |(c - rm) g| + |c g| + 2 |rm g| + |beta| + 2 |z|)       either affine form
    + u (|g| (|a| * |k|) + sqrt(K + 1) |b'| + 2 |(b - rm) g| + |b'|)   the folded convolution

with ``b' = (b - rm) g + beta`` the folded bias and ``K = 9C``. ``r_g``: ``rv + eps``
rounds (``u/2`` after the square root), the square root and the division or an
approximate reciprocal square root (``3u``, as in training mode), the product with
``scale`` (``u``), and the float32 representation of ``eps``. The folded kernel's
rounding (``k * g`` to float32, relative ``u`` per weight) moves each product by at most
``u |a k g|``. The ReLU passes the budget; the residual add adds ``u |sum|``. The
convolutions' budgets are those of training mode (:func:`resblock.spec.error_model.
conv_budgets`), and the stored budget is ``S`` times the sum, as in spec section 8.

The spread (spec section 8.5) keeps independent errors in quadrature and the
per-channel ones (``g``'s rounding) coherent: ``sigma = sqrt(v + k^2)`` with ``v`` the
variances of every rounding above (each at most ``u^2`` relative) and ``k = |g| k_c +
|(c - rm) g| r_g``. Channels stay independent of each other, so the aggregate test of
section 8.5 applies with ``F`` degrees of freedom as in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec.constants import EPSILON
from resblock.spec.error_model import (
    D_EPSILON,
    SAFETY,
    TRANSFORM_SPREAD,
    Budgets,
    U,
    abs_conv,
    conv_budgets,
    tile_square,
)
from resblock.spec.error_spread import CONV_ROUNDING_VAR, stored
from resblock.spec.oracle import conv3x3

STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum")
TENSORS = ("output",) + STAGES
LAYERS = (("Conv_0", "BatchNorm_0", "conv1", "bn1"), ("Conv_1", "BatchNorm_1", "conv2", "bn2"))
# Relative error of g = scale / sqrt(rv + eps) per unit u: rv + eps (1/2 after the
# square root), the square root and the division or an approximate rsqrt (3), scale (1).
G_ROUNDING = 4.5


@dataclass(frozen=True)
class InferenceResult:
    """The float64 oracle of one inference call: ``y`` and every stage."""

    y: np.ndarray
    stages: dict


def _f64_tree(tree):
    return {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in tree.items()}


def bn_gain(scale, var):
    """``g = scale / sqrt(var + eps)`` per channel (float64)."""
    return np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + EPSILON)


def forward(x, params, batch_stats) -> InferenceResult:
    """The inference block in float64 on float32 inputs: BatchNorm normalises with
    ``batch_stats`` (the running mean and variance), nothing is updated."""
    x = np.asarray(x, np.float64)
    p, s = _f64_tree(params), _f64_tree(batch_stats)
    stages = {}
    a = x
    for conv_name, layer, conv_stage, bn_stage in LAYERS:
        c = conv3x3(a, p[conv_name]["kernel"], p[conv_name]["bias"])
        g = bn_gain(p[layer]["scale"], s[layer]["var"])
        stages[conv_stage] = c
        stages[bn_stage] = (c - s[layer]["mean"]) * g + p[layer]["bias"]
        if bn_stage == "bn1":
            a = stages["relu1"] = np.maximum(stages["bn1"], 0.0)
    stages["sum"] = stages["bn2"] + x
    return InferenceResult(y=np.maximum(stages["sum"], 0.0), stages=stages)


def _g_rel(var):
    """``r_g``: the relative error bound of a float32 ``g``."""
    return G_ROUNDING * U + D_EPSILON / (2.0 * (np.asarray(var, np.float64) + EPSILON))


def _bn_budget(a, kernel, bias, c, e_c, s_c, scale, beta, rm, rv, z):
    """Unscaled budgets ``(e, s)`` of ``bn_inf(c)`` in any of the three forms."""
    g = bn_gain(scale, rv)
    ag = np.abs(g)
    dev = np.abs(c - rm) * ag
    b_fold = (bias - rm) * g + beta
    k_terms = 9 * a.shape[-1] + 1
    local = (2.0 * dev + np.abs(c * g) + 2.0 * np.abs(rm * g) + np.abs(beta) + 2.0 * np.abs(z)
             + ag * abs_conv(np.abs(a), np.abs(kernel)).astype(np.float64)
             + (np.sqrt(k_terms) + 1.0) * np.abs(b_fold) + 2.0 * np.abs((bias - rm) * g))
    e = ag * e_c + dev * _g_rel(rv) + U * local
    return e, ag * s_c


def raw_budgets(x, params, batch_stats, stages) -> tuple[dict, dict]:
    """The unscaled model: ``(e, s)`` dicts over :data:`TENSORS` (float64)."""
    x = np.asarray(x, np.float64)
    p, st = _f64_tree(params), _f64_tree(batch_stats)
    e, s = {}, {}
    a, e_a, s_a = x, None, None
    for conv_name, layer, conv_stage, bn_stage in LAYERS:
        k, b = p[conv_name]["kernel"], p[conv_name]["bias"]
        e_c, s_c = conv_budgets(a, e_a, s_a, k, b)
        e[conv_stage], s[conv_stage] = (np.asarray(e_c, np.float64),
                                        np.asarray(s_c, np.float64))
        e[bn_stage], s[bn_stage] = _bn_budget(
            a, k, b, stages[conv_stage], e[conv_stage], s[conv_stage], p[layer]["scale"],
            p[layer]["bias"], st[layer]["mean"], st[layer]["var"], stages[bn_stage])
        if bn_stage == "bn1":  # ReLU is 1-Lipschitz: it passes the budget
            e["relu1"], s["relu1"] = e["bn1"], s["bn1"]
            a = stages["relu1"]
            e_a, s_a = np.asarray(e["bn1"], np.float32), np.asarray(s["bn1"], np.float32)
    e["sum"] = e["bn2"] + U * np.abs(stages["sum"])
    s["sum"] = s["bn2"]
    e["output"], s["output"] = e["sum"], s["sum"]
    return e, s


def budgets(x, params, batch_stats, stages) -> Budgets:
    """Stored budgets of an inference case: ``S e`` and ``S s`` as float32, rounded up."""
    e, s = raw_budgets(x, params, batch_stats, stages)
    up = SAFETY * (1.0 + 2.0 ** -18)
    return Budgets(fp32={t: (e[t] * up).astype(np.float32) for t in TENSORS},
                   conv={t: (s[t] * up).astype(np.float32) for t in TENSORS})


def _conv_spread(a, v_a, k_a, vs_a, ks_a, kernel, bias, c):
    """``(v, k, vs, ks)`` of a convolution output (spec 8.5's conv rule)."""
    w2, a2 = np.square(kernel), np.square(a)
    t2 = abs_conv(a2, w2).astype(np.float64)
    k_terms = 9 * a.shape[-1] + 1
    own = np.maximum(U * U * k_terms * (t2 + np.square(bias) + np.square(c)),
                     (U * TRANSFORM_SPREAD) ** 2 * tile_square(a2, w2))
    del a2
    v = abs_conv(v_a, w2).astype(np.float64) + own
    k = np.sqrt(9.0 * abs_conv(np.square(k_a), w2).astype(np.float64))
    vs = abs_conv(vs_a, w2).astype(np.float64) + CONV_ROUNDING_VAR * t2
    ks = np.sqrt(9.0 * abs_conv(np.square(ks_a), w2).astype(np.float64))
    return v, k, vs, ks, t2


def spreads(x, params, batch_stats, stages) -> tuple[dict, dict]:
    """``(sigma, sigma_conv)`` of the output (float32, rounded up, as stored)."""
    x = np.asarray(x, np.float64)
    p, st = _f64_tree(params), _f64_tree(batch_stats)
    a = x
    v = k = vs = ks = np.zeros(x.shape)
    for conv_name, layer, conv_stage, bn_stage in LAYERS:
        kern, b = p[conv_name]["kernel"], p[conv_name]["bias"]
        c = stages[conv_stage]
        v, k, vs, ks, t2 = _conv_spread(a, v, k, vs, ks, kern, b, c)
        rm, rv = st[layer]["mean"], st[layer]["var"]
        scale, beta = p[layer]["scale"], p[layer]["bias"]
        g = bn_gain(scale, rv)
        dev = (c - rm) * g
        b_fold = (b - rm) * g + beta
        local2 = (2.0 * np.square(dev) + np.square(c * g) + 2.0 * np.square(rm * g)
                  + np.square(beta) + 2.0 * np.square(stages[bn_stage])
                  + np.square(g) * t2 / 3.0 + (9 * a.shape[-1] + 2) * np.square(b_fold)
                  + 2.0 * np.square((b - rm) * g))
        v = np.square(g) * v + U * U * local2
        k = np.abs(g) * k + np.abs(dev) * _g_rel(rv)
        vs, ks = np.square(g) * vs, np.abs(g) * ks
        if bn_stage == "bn1":
            a = stages["relu1"]
    v = v + U * U * np.square(stages["sum"])
    return ({"output": stored(np.sqrt(v + np.square(k)))},
            {"output": stored(np.sqrt(vs + np.square(ks)))})


__all__ = ["InferenceResult", "STAGES", "TENSORS", "bn_gain", "budgets", "forward",
           "raw_budgets", "spreads"]
