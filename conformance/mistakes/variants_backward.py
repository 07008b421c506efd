"""Backward pitfalls: a table of the classic mistakes of the block's VJP, each with a NumPy
twin (the oracle backward of :mod:`resblock.spec.backward` with that one mistake on).

``resblock check --api backward`` runs the twins on a failing case's inputs and names the
one the implementation's gradients match (:func:`diagnose_backward`), as the forward
diagnosis does with :mod:`resblock.conformance.mistakes.variants`. The committed golden set must
reject every row (tests/conformance/judging/test_check_backward.py; ``resblock coverage`` shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec import backward as bwd
from resblock.spec import oracle
from resblock.spec.constants import EPSILON, PARAM_NAMES


@dataclass(frozen=True)
class BackwardPitfall:
    """One backward mistake: its name, what it does, how to fix it, the gradients it
    changes, and the smallest ``N*H*W`` at which it changes anything."""

    name: str
    title: str
    explanation: str
    fix: str
    affects: tuple[str, ...]
    min_values: int = 1  # N*H*W at which the mistake is visible
    min_features: int = 1
    # visible only where a ReLU's input is exactly 0 in the oracle (bn1 or sum)
    at_exact_zero: bool = False

    def fix_for(self, api: str) -> str:
        """The fix text (a backward mistake has one, whatever the check)."""
        return self.fix


_UPSTREAM_BN0 = ("x", "Conv_0/kernel", "Conv_0/bias", "BatchNorm_0/scale", "BatchNorm_0/bias")
_UPSTREAM_BN1 = ("x", "Conv_0/kernel", "BatchNorm_0/scale", "BatchNorm_0/bias",
                 "Conv_1/kernel", "BatchNorm_1/scale")

BACKWARD_PITFALLS: tuple[BackwardPitfall, ...] = (
    BackwardPitfall(
        "bwd_bn_stats_constant", "BatchNorm backward treats the batch mean and variance as "
        "constants",
        "c_bar = scale inv g: the two terms through the batch mean and variance (both depend "
        "on the input) are lost, as if the BatchNorm were in inference mode",
        "use c_bar = scale inv (g - mean(g) - zhat mean(g zhat)) per channel (spec 10.2), or "
        "let autodiff differentiate the batch statistics", _UPSTREAM_BN1),
    BackwardPitfall(
        "bwd_bn_running_stats", "BatchNorm backward uses the running statistics",
        "zhat and inv are recomputed from the incoming running mean and variance (inference "
        "BatchNorm's backward) instead of this batch's statistics",
        "differentiate the training-mode forward: the batch mean and biased batch variance "
        "that normalised the input", _UPSTREAM_BN1),
    BackwardPitfall(
        "bwd_bn_unbiased_var", "BatchNorm backward with the unbiased variance",
        "the backward recomputes inv with var * n / (n - 1) (torch.var's default), while the "
        "forward normalised with the biased variance",
        "use the biased variance (divide by n) that the forward used; better, save inv from "
        "the forward", _UPSTREAM_BN1, min_values=2),
    BackwardPitfall(
        "bwd_bn_unbiased_var_everywhere", "Unbiased variance in the forward and the backward",
        "both BatchNorms normalise with var * n / (n - 1) (torch.var's default, or "
        "x.var() in a hand-written BatchNorm) and the backward differentiates that "
        "forward: every gradient is off by about 1/(2n) of its size, more where it "
        "cancels (the bias gradients)",
        "normalise with the biased batch variance (divide by n, not n - 1: "
        "x.var(unbiased=False) or correction=0) in the forward; the backward then follows",
        _UPSTREAM_BN1 + ("BatchNorm_1/bias",), min_values=2),
    BackwardPitfall(
        "bwd_conv_kernel_grad_transposed", "Conv kernel gradient with in/out channels swapped",
        "k_bar[i, j] = c_bar^T a instead of a^T c_bar: the (C_in, F) axes of each tap are "
        "transposed (silent when C == F)",
        "k_bar[i, j, c, f] = sum over n, h, w of a_pad[n, h+i, w+j, c] * c_bar[n, h, w, f]",
        ("Conv_0/kernel", "Conv_1/kernel"), min_features=2),
    BackwardPitfall(
        "bwd_conv_kernel_grad_flipped", "Conv kernel gradient flipped in space",
        "k_bar[::-1, ::-1]: the gradient of a convolution (flipped kernel) for a "
        "cross-correlation forward, or the taps indexed from the wrong corner",
        "the forward is a cross-correlation: tap (i, j) correlates a_pad shifted by (i, j) "
        "with c_bar, no flip", ("Conv_0/kernel", "Conv_1/kernel")),
    BackwardPitfall(
        "bwd_conv_bias_grad_not_summed", "Conv bias gradient not summed over N, H, W",
        "b_bar = c_bar[0, 0, 0, :]: one position's cotangent instead of the sum over N, H "
        "and W (the sum is exactly 0 here: the BatchNorm after the conv subtracts the bias "
        "out again)",
        "b_bar[f] = sum over n, h, w of c_bar[n, h, w, f]", ("Conv_0/bias", "Conv_1/bias"),
        min_values=2),
    BackwardPitfall(
        "bwd_residual_dropped", "The residual's gradient path is dropped",
        "x_bar = conv1's input gradient only: the skip connection's cotangent (y_bar where "
        "the output is > 0) is not added",
        "x_bar = sum_bar + the transposed conv1 of c1_bar: the skip passes sum_bar "
        "to x unchanged", ("x",)),
    BackwardPitfall(
        "bwd_relu_one_at_zero", "ReLU derivative 1 at exactly 0",
        "the mask is (input >= 0): where the ReLU's input is exactly 0 the cotangent "
        "passes, where JAX and PyTorch pass none. Where a BatchNorm's scale is 0 (a "
        "zero-init residual, a dead channel) its output is exactly its bias in every "
        "float32 evaluation and this is rejected; where a channel's values are all equal "
        "a correct float32 BatchNorm may put them at +-1e-7 (PyTorch's CPU batch_norm "
        "does), so there the checker admits both",
        "pass the cotangent where the ReLU input is > 0 only (derivative 0 at 0)",
        ("x", "Conv_0/kernel", "BatchNorm_0/scale"), min_values=2, at_exact_zero=True),
)

BACKWARD_BY_NAME = {p.name: p for p in BACKWARD_PITFALLS}


def lookup(name: str) -> BackwardPitfall:
    return BACKWARD_BY_NAME[name]


def applies(p: BackwardPitfall, case, gc=None) -> bool:
    """Whether mistake ``p`` can show on ``case``; with the golden case ``gc``, a mistake
    ``at_exact_zero`` also needs a ReLU input that is exactly 0 (oracle ``bn1`` or
    ``sum``)."""
    if case.n * case.h * case.w < p.min_values or case.features < p.min_features:
        return False
    if p.at_exact_zero and gc is not None:
        return bool(np.any(gc.reference("bn1") == 0) or np.any(gc.reference("sum") == 0))
    return True


def _unbiased_forward(x, p) -> dict:
    """The stages of a forward whose BatchNorms use the unbiased variance."""
    x = np.asarray(x, np.float64)
    st = {"conv1": oracle.conv3x3(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])}
    for conv, bn, c, b, nxt in (("Conv_0", "BatchNorm_0", "conv1", "bn1", "relu1"),
                                ("Conv_1", "BatchNorm_1", "conv2", "bn2", None)):
        if c == "conv2":
            st["conv2"] = oracle.conv3x3(st["relu1"], p[conv]["kernel"], p[conv]["bias"])
        y = st[c]
        n = y.shape[0] * y.shape[1] * y.shape[2]
        mean, var = oracle.batch_stats_of(y)
        var = var * n / max(n - 1, 1)
        st[b] = (y - mean) / np.sqrt(var + EPSILON) * p[bn]["scale"] + p[bn]["bias"]
        if nxt:
            st[nxt] = np.maximum(st[b], 0.0)
    st["sum"] = st["bn2"] + x
    return st


def _bn_backward(mistake, c, scale, g, stats):
    axes = (0, 1, 2)
    n = c.shape[0] * c.shape[1] * c.shape[2]
    mean, var = oracle.batch_stats_of(c)
    if mistake == "bwd_bn_running_stats":
        mean, var = stats["mean"], stats["var"]
    if mistake in ("bwd_bn_unbiased_var", "bwd_bn_unbiased_var_everywhere"):
        var = var * n / (n - 1)
    inv = 1.0 / np.sqrt(var + EPSILON)
    zhat = (c - mean) * inv
    beta_bar = g.sum(axis=axes)
    scale_bar = (g * zhat).sum(axis=axes)
    if mistake in ("bwd_bn_stats_constant", "bwd_bn_running_stats"):
        return scale * inv * g, scale_bar, beta_bar
    c_bar = scale * inv * (g - g.mean(axis=axes) - zhat * (g * zhat).mean(axis=axes))
    return c_bar, scale_bar, beta_bar


def _conv_backward(mistake, a, kernel, c_bar):
    a_bar = bwd.conv3x3_input_grad(c_bar, kernel)
    k_bar = bwd.conv3x3_kernel_grad(a, c_bar)
    if mistake == "bwd_conv_kernel_grad_transposed":
        k_bar = np.swapaxes(k_bar, 2, 3)
    elif mistake == "bwd_conv_kernel_grad_flipped":
        k_bar = k_bar[::-1, ::-1]
    b_bar = c_bar[0, 0, 0, :] if mistake == "bwd_conv_bias_grad_not_summed" else \
        c_bar.sum(axis=(0, 1, 2))
    return a_bar, k_bar, b_bar


def twin_backward(mistake: str | None, x, params, batch_stats, y_bar):
    """``(x_bar, params_bar)`` in float64 with one mistake switched on (None: correct)."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    s = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    st = (_unbiased_forward(x, p) if mistake == "bwd_bn_unbiased_var_everywhere" else
          oracle.forward(x, params, batch_stats).stages)

    def relu_bw(pre, g):
        return np.where(pre >= 0 if mistake == "bwd_relu_one_at_zero" else pre > 0, g, 0.0)

    sum_bar = relu_bw(st["sum"], f64(y_bar))
    c2_bar, s1, b1 = _bn_backward(mistake, st["conv2"], p["BatchNorm_1"]["scale"], sum_bar,
                                  s["BatchNorm_1"])
    r_bar, k1, cb1 = _conv_backward(mistake, st["relu1"], p["Conv_1"]["kernel"], c2_bar)
    c1_bar, s0, b0 = _bn_backward(mistake, st["conv1"], p["BatchNorm_0"]["scale"],
                                  relu_bw(st["bn1"], r_bar), s["BatchNorm_0"])
    x_conv, k0, cb0 = _conv_backward(mistake, f64(x), p["Conv_0"]["kernel"], c1_bar)
    x_bar = x_conv if mistake == "bwd_residual_dropped" else x_conv + sum_bar
    return x_bar, {"Conv_0": {"kernel": k0, "bias": cb0}, "BatchNorm_0": {"scale": s0,
                                                                         "bias": b0},
                   "Conv_1": {"kernel": k1, "bias": cb1}, "BatchNorm_1": {"scale": s1,
                                                                         "bias": b1}}


def flat(x_bar, params_bar) -> dict:
    """``{"x": x_bar, "Conv_0/kernel": ..., ...}`` (the names of the backward checks)."""
    out = {"x": x_bar}
    for name in PARAM_NAMES:
        layer, leaf = name.split("/")
        out[name] = params_bar[layer][leaf]
    return out


def backward_score(gc, grads: dict, prof, ref: dict | None = None,
                   aggregate: bool = False) -> float:
    """Worst score of flat gradients against ``ref`` (default: the oracle) under the
    case's gradient bounds; with ``aggregate``, the aggregate test's scores against the
    oracle too (spec 8.5; none for a file without spreads)."""
    from resblock.spec import tolerance

    worst = 0.0
    for name, got in grads.items():
        want = gc.grad_reference(name) if ref is None else ref[name]
        s = tolerance.scores(np.asarray(got, np.float64), np.asarray(want, np.float64),
                             gc.grad_bound(name, prof))
        worst = max(worst, float(np.max(s)) if s.size else 0.0)
        if aggregate:
            a = gc.aggregate_score(name, got, prof, grad=True)
            worst = max(worst, a if a is not None else 0.0)
    return worst


def twin_gradients(gc) -> dict:
    """``{pitfall: flat gradients}`` of every backward twin that applies to the case."""
    out = {}
    with np.errstate(all="ignore"):
        for p in BACKWARD_PITFALLS:
            if applies(p, gc.case, gc):
                out[p.name] = flat(*twin_backward(p.name, gc.x, gc.params, gc.batch_stats_in,
                                                  gc.y_bar))
    return out


def diagnose_backward(gc, grads: dict, prof) -> str | None:
    """The backward pitfall whose twin explains ``grads`` (flat, NHWC/HWIO), or None:
    matched within tolerance, or ten times closer than to the oracle."""
    from resblock.conformance.mistakes.diagnose import best_match

    d_ref = backward_score(gc, grads, prof)
    scores = {}
    for name, ref in twin_gradients(gc).items():
        s = backward_score(gc, grads, prof, ref)
        scores[name] = (s, s)
    return best_match(d_ref, scores)
