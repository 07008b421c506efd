"""The float64 oracle: an independent NumPy evaluation of the block (no JAX, no Flax).

Like JAX's ``lax_reference``, this is a second implementation in a different library
that checks the reference. It takes the float32 inputs and parameters of a case, widens
them to float64, and evaluates the block exactly as spec section 3 defines it, with a
two-pass variance (in float64 the single-pass formula would be fine too; two-pass keeps
the oracle accurate even when a channel's mean dwarfs its spread). It also returns every
intermediate stage, so a failing implementation can be told which stage diverges first,
and kappa, the case's worst channel conditioning ``1 + mean^2 / (var + eps)`` (recorded
in the case index for information; the rule's budgets come from ``error_model``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec.constants import EPSILON, MOMENTUM
from resblock.spec.error_model import for_blocks, pad_hw


@dataclass(frozen=True)
class OracleResult:
    """Float64 results of one forward: output, updated stats, stages, kappa."""

    y: np.ndarray
    batch_stats: dict
    stages: dict
    kappa: float


def conv3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """SAME (zero pad 1) stride-1 cross-correlation, NHWC x HWIO -> NHWC, plus bias.
    A block of about 4096 positions (whole samples) at a time: the same sums element by
    element as over the whole tensor, in cache."""
    n, h, w, _ = x.shape
    out = np.empty((n, h, w, kernel.shape[-1]), dtype=np.float64)
    step = max(1, 4096 // max(h * w, 1))

    def block(b):  # blocks on every core (error_model.for_blocks): the same bits
        xp = pad_hw(x[b:b + step])
        ob = np.zeros((xp.shape[0], h, w, kernel.shape[-1]), dtype=np.float64)
        for i in range(3):
            for j in range(3):
                ob += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
        out[b:b + step] = ob + bias

    for_blocks(block, range(0, n, step))
    return out


def batch_stats_of(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance over N, H, W (two-pass)."""
    mean = y.mean(axis=(0, 1, 2))
    var = np.square(y - mean).mean(axis=(0, 1, 2))
    return mean, var


def batch_norm_train(y, scale, bias, mean_in, var_in):
    """Training-mode BatchNorm: normalised output, (new_mean, new_var), (mean, var)."""
    mean, var = batch_stats_of(y)
    out = (y - mean) / np.sqrt(var + EPSILON) * scale + bias
    new_mean = MOMENTUM * mean_in + (1.0 - MOMENTUM) * mean
    new_var = MOMENTUM * var_in + (1.0 - MOMENTUM) * var
    return out, (new_mean, new_var), (mean, var)


def kappa_of(batch_moments, count: int) -> float:
    """1 + max over channels and layers of mean^2 / (var + eps).

    ``count`` is N*H*W, the number of values per channel. With one value per channel
    every variance formula gives exactly 0 (x*x - x*x cancels exactly), so there is no
    cancellation to bound and kappa is 1.
    """
    if count == 1:
        return 1.0
    return 1.0 + max(float(np.max(m * m / (v + EPSILON))) for m, v in batch_moments)


@blas.single_threaded
def forward(x, params, batch_stats) -> OracleResult:
    """Evaluate the block in float64 on (float32) inputs; see module docstring."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    x = f64(x)
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    s = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    conv1 = conv3x3(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    bn1, (m0, v0), mom0 = batch_norm_train(
        conv1, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"],
        s["BatchNorm_0"]["mean"], s["BatchNorm_0"]["var"],
    )
    relu1 = np.maximum(bn1, 0.0)
    conv2 = conv3x3(relu1, p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
    bn2, (m1, v1), mom1 = batch_norm_train(
        conv2, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"],
        s["BatchNorm_1"]["mean"], s["BatchNorm_1"]["var"],
    )
    pre = bn2 + x
    y = np.maximum(pre, 0.0)
    stats = {"BatchNorm_0": {"mean": m0, "var": v0}, "BatchNorm_1": {"mean": m1, "var": v1}}
    stages = {"conv1": conv1, "bn1": bn1, "relu1": relu1, "conv2": conv2, "bn2": bn2, "sum": pre}
    kappa = kappa_of([mom0, mom1], count=x.shape[0] * x.shape[1] * x.shape[2])
    return OracleResult(y=y, batch_stats=stats, stages=stages, kappa=kappa)
