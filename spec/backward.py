"""The float64 oracle backward: the vector-Jacobian product of the block, hand-derived.

An independent NumPy evaluation (no JAX, no autodiff) of spec section 10: given a case's
float32 ``x``, parameters, incoming running statistics and a cotangent ``y_bar`` of the
output, it returns ``x_bar`` and the gradient of every parameter (Flax names), evaluated
in float64 with the formulas below, and the cotangent of every stage (the error model of
:mod:`resblock.spec.error_model_backward` propagates through them).

* **ReLU** ``r = max(p, 0)``: ``p_bar = r_bar * (p > 0)``; the derivative at exactly
  ``p = 0`` is **0** (JAX's ``jax.nn.relu``, which Flax's ``nn.relu`` is; PyTorch's
  ``threshold_backward`` agrees: it passes the gradient where ``p > 0`` only).
* **BatchNorm, training mode**, per channel over the ``n = N*H*W`` values ``c`` with the
  batch mean ``m``, biased variance ``v``, ``inv = 1/sqrt(v + eps)``,
  ``zhat = (c - m) inv`` and ``out = scale zhat + beta``; with ``g = out_bar``::

      beta_bar  = sum(g)                   scale_bar = sum(g zhat)
      c_bar     = scale inv (g - mean(g) - zhat mean(g zhat))

  The last two terms are the gradient through the batch mean and the batch variance
  (they depend on ``c``); dropping them is the "statistics as constants" mistake. The
  running statistics take no part: the output does not depend on them, and the updated
  running statistics are not differentiated (they are state, not outputs of the VJP).
* **Convolution** ``c = conv3x3(a, k) + b`` (cross-correlation, zero padding 1)::

      b_bar[f]         = sum over n, h, w of c_bar[..., f]
      k_bar[i, j, :, :] = sum over n, h, w of ap[n, h+i, w+j, :]^T c_bar[n, h, w, :]
      a_bar            = the transposed convolution of c_bar with k (crop the padding)

  Since a training-mode BatchNorm follows each convolution, ``sum(c_bar) = 0`` in exact
  arithmetic: both conv-bias gradients are exactly 0, and a float32 port returns
  rounding noise there.
* **Residual**: ``x_bar = sum_bar + conv1's input gradient``, with
  ``sum_bar = y_bar * (sum > 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec import oracle
from resblock.spec.constants import EPSILON
from resblock.spec.error_model import cores, for_blocks, pad_hw, sample_blocks

BACKWARD_STAGES = ("sum", "bn2", "conv2", "relu1", "bn1", "conv1")


@dataclass(frozen=True)
class BackwardResult:
    """Float64 gradients: ``x_bar``, ``params_bar`` (nested, Flax names), the forward
    the backward ran on (:class:`resblock.spec.oracle.OracleResult`) and the cotangent of
    each stage's *output* in ``cotangents`` (``"sum"``: of the pre-activation sum, ...)."""

    x_bar: np.ndarray
    params_bar: dict
    forward: oracle.OracleResult
    cotangents: dict
    # the ReLU masks the backward used ("sum": the output ReLU's, "bn1": relu1's): the
    # oracle's (pre-activation > 0) unless some were flipped on purpose
    masks: dict | None = None


def relu_backward(pre: np.ndarray, out_bar: np.ndarray) -> np.ndarray:
    """``out_bar`` where ``pre > 0``, else 0 (the derivative at exactly 0 is 0)."""
    return np.where(pre > 0, out_bar, 0.0)


def batch_norm_backward(c: np.ndarray, scale: np.ndarray, g: np.ndarray):
    """Training-mode BatchNorm VJP: ``(c_bar, scale_bar, beta_bar)`` for ``g = out_bar``."""
    axes = (0, 1, 2)
    mean, var = oracle.batch_stats_of(c)
    inv = 1.0 / np.sqrt(var + EPSILON)
    zhat = (c - mean) * inv
    beta_bar = g.sum(axis=axes)
    scale_bar = (g * zhat).sum(axis=axes)
    c_bar = scale * inv * (g - g.mean(axis=axes) - zhat * (g * zhat).mean(axis=axes))
    return c_bar, scale_bar, beta_bar


def conv3x3_input_grad(c_bar: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The transposed SAME convolution: ``a_bar`` (NHWC) of ``c = conv3x3(a, kernel)``.
    A block of samples at a time (the same sums element by element; in cache), blocks on
    every core (:func:`resblock.spec.error_model.for_blocks`, as the forward's
    :func:`resblock.spec.oracle.conv3x3`)."""
    n, h, w, _ = c_bar.shape
    out = np.empty((n, h, w, kernel.shape[2]), dtype=np.float64)

    def block(blk):
        ob = np.zeros((blk.stop - blk.start, h + 2, w + 2, kernel.shape[2]),
                      dtype=np.float64)
        cb = c_bar[blk]
        for i in range(3):
            for j in range(3):
                ob[:, i:i + h, j:j + w, :] += cb @ kernel[i, j].T
        out[blk] = ob[:, 1:h + 1, 1:w + 1, :]

    for_blocks(block, sample_blocks(n, h, w))
    return out


def conv3x3_kernel_grad(a: np.ndarray, c_bar: np.ndarray) -> np.ndarray:
    """``k_bar`` (HWIO) of ``c = conv3x3(a, k)``: each tap correlates the padded input
    with ``c_bar`` over N, H, W. Summed a block of samples at a time: one block (the
    same sums as over the whole tensor) up to 4096 values per channel; beyond, the
    blocks' sums are added in block order (a float64 rounding apart, and 3-10x faster at
    32x56x56x64 than copying each shifted tensor whole). The blocks' products run on
    every core, as many at a time as there are cores, and are added in the same order:
    the same bits as one after the other."""
    n, h, w, ci = a.shape
    f = c_bar.shape[-1]
    out = np.empty((3, 3, ci, f), dtype=np.float64)
    blocks = sample_blocks(n, h, w)
    wave = cores()

    def taps(blk):
        ap = pad_hw(a[blk])
        cb = c_bar[blk].reshape(-1, f)
        t = np.empty((3, 3, ci, f), dtype=np.float64)
        for i in range(3):
            for j in range(3):
                t[i, j] = ap[:, i:i + h, j:j + w, :].reshape(-1, ci).T @ cb
        return t

    for start in range(0, len(blocks), wave):
        part = blocks[start:start + wave]
        sums: list = [None] * len(part)

        def one(k, part=part, sums=sums):
            sums[k] = taps(part[k])

        for_blocks(one, range(len(part)))
        for k, t in enumerate(sums):
            if start + k == 0:  # assigned, not added to 0.0: a -0.0 stays -0.0
                out[...] = t
            else:
                out += t
    return out


@blas.single_threaded
def backward(x, params, batch_stats, y_bar, flipped=()) -> BackwardResult:
    """The VJP of the block (training mode) at ``(x, params)`` for cotangent ``y_bar``.
    ``flipped``: ``(stage, index)`` pairs ("sum" or "bn1") whose ReLU mask is taken
    flipped (the masks a correct float32 port may see otherwise, spec 10.4)."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    fwd = oracle.forward(x, params, batch_stats)
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = fwd.stages
    axes = (0, 1, 2)
    masks = {"sum": st["sum"] > 0, "bn1": st["bn1"] > 0}
    for stage, idx in flipped:
        masks[stage][idx] = not masks[stage][idx]
    sum_bar = np.where(masks["sum"], f64(y_bar), 0.0)
    c2_bar, s1_bar, b1_bar = batch_norm_backward(st["conv2"], p["BatchNorm_1"]["scale"],
                                                 sum_bar)
    r_bar = conv3x3_input_grad(c2_bar, p["Conv_1"]["kernel"])
    bn1_bar = np.where(masks["bn1"], r_bar, 0.0)
    c1_bar, s0_bar, b0_bar = batch_norm_backward(st["conv1"], p["BatchNorm_0"]["scale"],
                                                 bn1_bar)
    x_bar = sum_bar + conv3x3_input_grad(c1_bar, p["Conv_0"]["kernel"])
    params_bar = {
        "Conv_0": {"kernel": conv3x3_kernel_grad(f64(x), c1_bar),
                   "bias": c1_bar.sum(axis=axes)},
        "BatchNorm_0": {"scale": s0_bar, "bias": b0_bar},
        "Conv_1": {"kernel": conv3x3_kernel_grad(st["relu1"], c2_bar),
                   "bias": c2_bar.sum(axis=axes)},
        "BatchNorm_1": {"scale": s1_bar, "bias": b1_bar},
    }
    cot = {"sum": sum_bar, "bn2": sum_bar, "conv2": c2_bar, "relu1": r_bar, "bn1": bn1_bar,
           "conv1": c1_bar}
    return BackwardResult(x_bar=x_bar, params_bar=params_bar, forward=fwd, cotangents=cot,
                          masks=masks)
