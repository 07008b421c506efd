"""The inference block with BatchNorm folded into the convolutions, in NumPy float32:
what ONNX Runtime, OpenVINO, TensorRT and ``torch.fx`` fusion compute (a conforming
example of ``--api inference``, spec section 12)::

    resblock check --impl examples/numpy_folded_inference.py:infer --api inference

Each BatchNorm ``(c - mean) * g + beta`` with ``g = scale / sqrt(var + 1e-5)`` becomes
the convolution before it with the kernel ``k * g`` (each OUTPUT channel's filter scaled:
HWIO axis 3) and the bias ``(b - mean) * g + beta`` (the conv bias ``b`` included). NHWC,
HWIO kernels; ``batch_stats`` are the running statistics. This file imports only NumPy.
"""

import numpy as np

EPS = np.float32(1e-5)


def conv3x3(a, kernel, bias):
    """SAME stride-1 3x3 cross-correlation, NHWC x HWIO, float32."""
    n, h, w, _ = a.shape
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]), np.float32)
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out + bias


def fold(kernel, bias, scale, beta, mean, var):
    """``(kernel * g, (bias - mean) * g + beta)``: BatchNorm folded into the conv."""
    g = scale / np.sqrt(var + EPS)
    return (kernel * g).astype(np.float32), ((bias - mean) * g + beta).astype(np.float32)


def infer(x, params, batch_stats):
    x = np.asarray(x, np.float32)
    a = x
    for i in range(2):
        conv, bn, st = params[f"Conv_{i}"], params[f"BatchNorm_{i}"], batch_stats[f"BatchNorm_{i}"]
        k, b = fold(conv["kernel"], conv["bias"], bn["scale"], bn["bias"], st["mean"], st["var"])
        a = conv3x3(a, k, b)
        if i == 0:
            a = np.maximum(a, np.float32(0))
    return np.maximum(a + x, np.float32(0))
