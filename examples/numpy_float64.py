"""The ResNet basic block in plain NumPy, computed in float64 (a conforming example).

Contract (layout "nhwc", the kit's default)::

    forward(x, params, batch_stats) -> (y, new_batch_stats)

    x       float32 (N, H, W, C), C == F
    params  {"Conv_0": {"kernel": (3, 3, C, F), "bias": (F,)},
             "BatchNorm_0": {"scale": (F,), "bias": (F,)},
             "Conv_1": {...}, "BatchNorm_1": {...}}
    batch_stats  {"BatchNorm_0": {"mean": (F,), "var": (F,)}, "BatchNorm_1": {...}}

The block: conv3x3 (zero padding 1, stride 1, cross-correlation, + bias) -> BatchNorm
in training mode -> ReLU -> conv3x3 -> BatchNorm -> (+ x) -> ReLU. BatchNorm normalises
with the batch's per-channel mean and biased variance over N, H, W and eps 1e-5 inside
the square root, and returns running stats 0.99 * old + 0.01 * batch (biased variance).

Everything is computed in float64 and returned as float32, so this file is also a quick
independent check of goldens. Check it with::

    resblock check --impl examples/numpy_float64.py:forward

This file imports only NumPy; copy it as a starting point for a port.
"""

import numpy as np

EPS = 1e-5
MOMENTUM = 0.99  # weight of the old running value (Flax convention)


def conv3x3(x, kernel, bias):
    """SAME 3x3 cross-correlation of NHWC ``x`` with HWIO ``kernel``: 9 shifted matmuls."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, kernel.shape[-1]), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            y += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return y + bias


def batch_norm_train(y, scale, bias, running_mean, running_var):
    """Training-mode BatchNorm over N, H, W; returns (normalised, new_mean, new_var)."""
    mean = y.mean(axis=(0, 1, 2))
    var = np.square(y - mean).mean(axis=(0, 1, 2))  # biased: divide by N*H*W
    out = (y - mean) / np.sqrt(var + EPS) * scale + bias
    new_mean = MOMENTUM * running_mean + (1.0 - MOMENTUM) * mean
    new_var = MOMENTUM * running_var + (1.0 - MOMENTUM) * var
    return out, new_mean, new_var


def forward(x, params, batch_stats):
    f64 = np.float64
    x = np.asarray(x, f64)
    h = x
    new_stats = {}
    for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
        h = conv3x3(
            h, np.asarray(params[conv]["kernel"], f64), np.asarray(params[conv]["bias"], f64)
        )
        h, mean, var = batch_norm_train(
            h,
            np.asarray(params[bn]["scale"], f64),
            np.asarray(params[bn]["bias"], f64),
            np.asarray(batch_stats[bn]["mean"], f64),
            np.asarray(batch_stats[bn]["var"], f64),
        )
        new_stats[bn] = {"mean": mean.astype(np.float32), "var": var.astype(np.float32)}
        if conv == "Conv_0":
            h = np.maximum(h, 0.0)
    y = np.maximum(h + x, 0.0)
    return y.astype(np.float32), new_stats
