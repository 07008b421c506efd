"""The exact image of every channel source on the gradients (spec section 10.4).

A channel source is an error one number per channel: a BatchNorm's rounded batch mean
(``dm``, in units of its input) and ``inv = 1/sqrt(var + eps)`` (``dr``, relative), the
folded form's per-channel rounding of its output (``da``), and the backward's rounded
``mean(g)`` (``dg``) and ``mean(g zhat)`` (``dgz``); five per BatchNorm and channel, each
independent of the others with the standard deviation the spread model gives it. Such an
error is the same for every element of its channel, so the triangle inequality over a
reduction's ``n`` terms, which is how a magnitude would have to carry it, overstates its
effect on everything downstream by up to ``n`` (the 1e4-fold slack of the first layer's
gradients at 2^14 values per channel, DESIGN section 6). Its effect is instead computed
exactly, to first order: the directional derivative of the float64 forward and VJP of
spec section 10 along that one perturbation, with the ReLU masks held at the oracle's
(mask flips are the model's ``m``). The derivative is the forward-mode linearisation of
the block and its VJP (written out below), evaluated for all channels of one kind at
once. The images of independent sources add in quadrature::

    k_t = sqrt( sum over kinds, layers and channels of sigma^2 * (d grad_t / d source)^2 )

which replaces the per-element channel-shared term ``k`` of every gradient. The cost is
ten linearised backwards per channel batch (about ``10 F`` convolution-sized products per
convolution of the oracle), so above :data:`MAX_FLOPS` the model keeps the
triangle-inequality form.
"""

from __future__ import annotations

import numpy as np

from resblock.spec.backward import conv3x3_input_grad
from resblock.spec.constants import EPSILON, PARAM_NAMES

GRAD_TENSORS = ("x",) + PARAM_NAMES

KINDS = ("dm", "dr", "da", "dg", "dgz")
MAX_FLOPS = 4e10
_AXES = (1, 2, 3)  # per tangent: N, H, W


def cost(shape) -> float:
    """Multiply-adds of :func:`images` for activations of ``shape`` (N, H, W, F)."""
    n, h, w, f = shape
    return 2 * len(KINDS) * f * n * h * w * 9 * f * f * 6.0


def _conv_t(a, kernel):
    """3x3 SAME convolution (no bias) of tangents ``a`` (T, N, H, W, C)."""
    t, n, h, w, c = a.shape
    ap = np.pad(a.reshape(t * n, h, w, c), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((t * n, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out.reshape(t, n, h, w, -1)


def _input_grad_t(cb, kernel):
    t, n, h, w, f = cb.shape
    return conv3x3_input_grad(cb.reshape(t * n, h, w, f), kernel).reshape(t, n, h, w, -1)


def _kernel_grad(a, cb):
    """``conv3x3_kernel_grad`` for tangents: ``a`` or ``cb`` (or both) carry a leading
    tangent axis; the result has it too (T, 3, 3, C, F)."""
    a5 = a if a.ndim == 5 else a[None]
    c5 = cb if cb.ndim == 5 else cb[None]
    t = max(a5.shape[0], c5.shape[0])
    _, n, h, w, ci = a5.shape
    f = c5.shape[-1]
    ap = np.pad(a5, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.empty((t, 3, 3, ci, f))
    for i in range(3):
        for j in range(3):
            sl = ap[:, :, i:i + h, j:j + w, :].reshape(a5.shape[0], -1, ci)
            out[:, i, j] = np.matmul(sl.transpose(0, 2, 1), c5.reshape(c5.shape[0], -1, f))
    return out


def _mean(a):
    return a.mean(axis=_AXES)[:, None, None, None, :]


def _sum(a):
    return a.sum(axis=_AXES)


def images(x, params, stages, cot, kind: str, layer: int, open1=None) -> dict:
    """``{grad name: (F, ...) array}``: for each channel ``f`` the derivative of every
    gradient along a unit source of ``kind`` in channel ``f`` of BatchNorm ``layer``
    (masks held: ``open1``, relu1's, default the oracle's; the output ReLU's is in
    ``cot["sum"]``)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    x = f64(x)
    shape = x.shape
    nf = shape[-1]
    eye = np.eye(nf)[:, None, None, None, :]  # (T=F, 1, 1, 1, F): one channel per tangent
    zero = np.zeros((nf,) + shape)
    seed = {k: (eye if (k == kind) else 0.0) for k in KINDS}

    def bn_forward(c, dc, lay):
        """Tangents of zhat, inv (relative) and the output of BatchNorm ``lay``."""
        mean = c.mean(axis=(0, 1, 2))
        dev = c - mean
        var = np.square(dev).mean(axis=(0, 1, 2))
        inv = 1.0 / np.sqrt(var + EPSILON)
        zhat = dev * inv
        here = layer == lay
        dmean = _mean(dc) + (seed["dm"] if here else 0.0)
        dvar = 2.0 * _mean(dev * dc)
        drel = -dvar * 0.5 * inv * inv + (seed["dr"] if here else 0.0)  # d inv / inv
        dz = (dc - dmean) * inv + zhat * drel
        scale = p[f"BatchNorm_{lay}"]["scale"]
        dout = scale * dz + (seed["da"] if here else 0.0)
        return zhat, inv, dz, drel, dout

    def bn_backward(zhat, inv, dz, drel, g, dg, lay):
        """Tangents of c_bar, scale_bar, beta_bar of BatchNorm ``lay``'s VJP."""
        here = layer == lay
        gi = p[f"BatchNorm_{lay}"]["scale"] * inv
        mg = g.mean(axis=(0, 1, 2))
        mgz = (g * zhat).mean(axis=(0, 1, 2))
        bracket = g - mg - zhat * mgz
        dmg = _mean(dg) + (seed["dg"] if here else 0.0)
        dmgz = _mean(dg * zhat + g * dz) + (seed["dgz"] if here else 0.0)
        dcbar = gi * drel * bracket + gi * (dg - dmg - dz * mgz - zhat * dmgz)
        return dcbar, _sum(dg * zhat + g * dz), _sum(dg)

    st = stages
    # forward: conv1 is exact (x and the kernels are inputs)
    zh0, inv0, dz0, drel0, dbn1 = bn_forward(st["conv1"], zero, 0)
    open1 = st["bn1"] > 0 if open1 is None else open1
    drelu1 = dbn1 * open1
    dconv2 = _conv_t(drelu1, p["Conv_1"]["kernel"])
    zh1, inv1, dz1, drel1, _ = bn_forward(st["conv2"], dconv2, 1)
    # backward: y_bar and the output mask are fixed, so sum_bar has no tangent
    dc2b, ds1, db1 = bn_backward(zh1, inv1, dz1, drel1, cot["sum"], zero, 1)
    dk1 = _kernel_grad(drelu1, cot["conv2"]) + _kernel_grad(st["relu1"], dc2b)
    dr = _input_grad_t(dc2b, p["Conv_1"]["kernel"])
    dbn1b = dr * open1
    dc1b, ds0, db0 = bn_backward(zh0, inv0, dz0, drel0, cot["bn1"], dbn1b, 0)
    return {"x": _input_grad_t(dc1b, p["Conv_0"]["kernel"]),
            "Conv_0/kernel": _kernel_grad(x, dc1b), "Conv_0/bias": _sum(dc1b),
            "BatchNorm_0/scale": ds0, "BatchNorm_0/bias": db0,
            "Conv_1/kernel": dk1, "Conv_1/bias": _sum(dc2b),
            "BatchNorm_1/scale": ds1, "BatchNorm_1/bias": db1}


def source_k(x, params, stages, cot, sigmas: dict, open1=None) -> dict:
    """``{grad name: (k, ks)}``: the root-sum-square images of every channel source.
    ``sigmas[(kind, layer)] = (sigma, sigma_s)``, per-channel standard deviations (float32
    part and per unit ``u_conv``)."""
    acc = {t: [0.0, 0.0] for t in GRAD_TENSORS}
    n, h, w, _ = np.shape(x)
    if n * h * w == 1:  # c - mean and g - mean(g) are exactly 0: no source moves anything
        return {t: (0.0, 0.0) for t in GRAD_TENSORS}
    for (kind, layer), (sig, sig_s) in sigmas.items():
        sig, sig_s = np.asarray(sig, np.float64), np.asarray(sig_s, np.float64)
        if not (np.any(sig) or np.any(sig_s)):
            continue
        for t, im in images(x, params, stages, cot, kind, layer, open1).items():
            im2 = np.square(im)
            b = (slice(None),) + (None,) * (im2.ndim - 1)
            acc[t][0] = acc[t][0] + (np.square(sig)[b] * im2).sum(axis=0)
            acc[t][1] = acc[t][1] + (np.square(sig_s)[b] * im2).sum(axis=0)
    return {t: (np.sqrt(v), np.sqrt(vs)) for t, (v, vs) in acc.items()}


__all__ = ["GRAD_TENSORS", "KINDS", "MAX_FLOPS", "cost", "images", "source_k"]
