"""The backward pass of the ResNet basic block by hand, NumPy float32 (a conforming example).

Contract (``--api backward``, layout "nhwc")::

    backward(x, params, batch_stats, y_bar) -> (x_bar, params_bar)

    x, y_bar     float32 (N, H, W, C), C == F
    params       {"Conv_0": {"kernel": (3, 3, C, F), "bias": (F,)}, "BatchNorm_0": {...},
                  "Conv_1": {...}, "BatchNorm_1": {...}}
    params_bar   the same nesting and shapes: the gradient of sum(y * y_bar)

It runs the training-mode forward in float32, keeps what the backward needs, and
back-propagates by the formulas of spec section 10: ReLU passes the cotangent where its
input is > 0 (0 at exactly 0), BatchNorm's input gradient keeps the two terms through the
batch mean and variance, the convolutions' input gradient is the transposed convolution
and their kernel gradient a correlation over N, H, W. Check it with::

    resblock check --api backward --impl examples/numpy_backward.py:backward

This file imports only NumPy.
"""

import numpy as np

F32 = np.float32
EPS = F32(1e-5)


def conv3x3(x, kernel, bias):
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, kernel.shape[-1]), dtype=F32)
    for i in range(3):
        for j in range(3):
            y += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return y + bias


def conv3x3_backward(x, kernel, c_bar):
    """(x_bar, kernel_bar, bias_bar) of ``c = conv3x3(x, kernel, bias)``."""
    n, h, w, ci = x.shape
    f = kernel.shape[-1]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cb = c_bar.reshape(-1, f)
    x_bar = np.zeros_like(xp)
    k_bar = np.zeros_like(kernel)
    for i in range(3):
        for j in range(3):
            x_bar[:, i : i + h, j : j + w, :] += c_bar @ kernel[i, j].T
            k_bar[i, j] = xp[:, i : i + h, j : j + w, :].reshape(-1, ci).T @ cb
    bias_bar = np.ascontiguousarray(cb.T).sum(axis=1)
    return x_bar[:, 1 : h + 1, 1 : w + 1, :], k_bar, bias_bar


def channel_mean(a):
    rows = np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)  # pairwise sums per channel
    return rows.mean(axis=1, dtype=F32)


def batch_norm(c, scale, bias):
    mean = channel_mean(c)
    var = channel_mean(np.square(c - mean))
    inv = F32(1) / np.sqrt(var + EPS)
    zhat = (c - mean) * inv
    return zhat * scale + bias, (zhat, inv)


def batch_norm_backward(saved, scale, g):
    """(c_bar, scale_bar, bias_bar): the batch mean and variance depend on c too."""
    zhat, inv = saved
    mg = channel_mean(g)
    mgz = channel_mean(g * zhat)
    c_bar = (scale * inv) * (g - mg - zhat * mgz)
    n = F32(g.size // g.shape[-1])
    return c_bar, mgz * n, mg * n


def backward(x, params, batch_stats, y_bar):
    x = np.asarray(x, F32)
    p = {k: {kk: np.asarray(vv, F32) for kk, vv in v.items()} for k, v in params.items()}
    c1 = conv3x3(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    b1, s1 = batch_norm(c1, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"])
    r1 = np.maximum(b1, F32(0))
    c2 = conv3x3(r1, p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
    b2, s2 = batch_norm(c2, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"])
    pre = b2 + x
    g_sum = np.where(pre > 0, np.asarray(y_bar, F32), F32(0))
    c2_bar, sc1, be1 = batch_norm_backward(s2, p["BatchNorm_1"]["scale"], g_sum)
    r1_bar, k1, cb1 = conv3x3_backward(r1, p["Conv_1"]["kernel"], c2_bar)
    g1 = np.where(b1 > 0, r1_bar, F32(0))
    c1_bar, sc0, be0 = batch_norm_backward(s1, p["BatchNorm_0"]["scale"], g1)
    x_bar, k0, cb0 = conv3x3_backward(x, p["Conv_0"]["kernel"], c1_bar)
    grads = {"Conv_0": {"kernel": k0, "bias": cb0},
             "BatchNorm_0": {"scale": sc0, "bias": be0},
             "Conv_1": {"kernel": k1, "bias": cb1},
             "BatchNorm_1": {"scale": sc1, "bias": be1}}
    return x_bar + g_sum, grads
