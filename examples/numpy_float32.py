"""The ResNet basic block in plain NumPy, float32 throughout (a conforming example).

Contract (layout "nhwc", the kit's default)::

    forward(x, params, batch_stats) -> (y, new_batch_stats)

    x       float32 (N, H, W, C), C == F
    params  {"Conv_0": {"kernel": (3, 3, C, F), "bias": (F,)},
             "BatchNorm_0": {"scale": (F,), "bias": (F,)},
             "Conv_1": {...}, "BatchNorm_1": {...}}
    batch_stats  {"BatchNorm_0": {"mean": (F,), "var": (F,)}, "BatchNorm_1": {...}}

Every array stays float32, as in a typical C or GPU port. The variance is computed in two
passes, mean((y - mean)**2), which is more accurate than Flax's single pass
max(mean(y**2) - mean**2, 0) when a channel's mean is large against its spread; the spec
allows either. Statistics are summed over one contiguous axis so NumPy uses pairwise
summation. Check it with::

    resblock check --impl examples/numpy_float32.py:forward

This file imports only NumPy.
"""

import numpy as np

F32 = np.float32
EPS = F32(1e-5)
KEEP = F32(0.99)  # weight of the old running value (Flax convention)
TAKE = F32(0.01)  # weight of the batch statistic


def conv3x3(x, kernel, bias):
    """SAME 3x3 cross-correlation of NHWC ``x`` with HWIO ``kernel``: 9 shifted matmuls."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, kernel.shape[-1]), dtype=F32)
    for i in range(3):
        for j in range(3):
            y += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return y + bias


def batch_norm_train(y, scale, bias, running_mean, running_var):
    """Training-mode BatchNorm over N, H, W; returns (normalised, new_mean, new_var)."""
    rows = np.ascontiguousarray(y.reshape(-1, y.shape[-1]).T)  # (C, N*H*W)
    mean = rows.mean(axis=1, dtype=F32)
    var = np.square(rows - mean[:, None]).mean(axis=1, dtype=F32)  # biased (two-pass)
    out = (y - mean) * (scale / np.sqrt(var + EPS)) + bias
    return out, KEEP * running_mean + TAKE * mean, KEEP * running_var + TAKE * var


def forward(x, params, batch_stats):
    x = np.asarray(x, F32)
    h = x
    new_stats = {}
    for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
        h = conv3x3(
            h, np.asarray(params[conv]["kernel"], F32), np.asarray(params[conv]["bias"], F32)
        )
        h, mean, var = batch_norm_train(
            h,
            np.asarray(params[bn]["scale"], F32),
            np.asarray(params[bn]["bias"], F32),
            np.asarray(batch_stats[bn]["mean"], F32),
            np.asarray(batch_stats[bn]["var"], F32),
        )
        new_stats[bn] = {"mean": mean, "var": var}
        if conv == "Conv_0":
            h = np.maximum(h, F32(0))
    return np.maximum(h + x, F32(0)), new_stats
