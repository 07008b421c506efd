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
convolution of the oracle), so above :data:`MAX_FLOPS` or :data:`MAX_CHANNELS` the
model keeps the triangle-inequality form (:func:`exact`).
"""

from __future__ import annotations

import numpy as np

from resblock.spec.constants import EPSILON, PARAM_NAMES

GRAD_TENSORS = ("x",) + PARAM_NAMES

KINDS = ("dm", "dr", "da", "dg", "dgz")
# Sources by where their tangents start: BatchNorm_0's forward (the whole path), then
# BatchNorm_1's forward and backward, then BatchNorm_0's backward.
# Tangent elements per pass (16 MB of float64): small cases batch every source of a
# group (Python's overhead per operation dominates there), large ones split it.
CHUNK_ELEMENTS = 2 ** 21
GROUPS = (frozenset({("dm", 0), ("dr", 0), ("da", 0)}),
          frozenset({("dm", 1), ("dr", 1), ("da", 1), ("dg", 1), ("dgz", 1)}),
          frozenset({("dg", 0), ("dgz", 0)}))
MAX_FLOPS = 4e10
# The linearisation costs about 10 F oracle backwards (9 sources per channel, each a
# convolution-sized product per layer): beyond 32 channels the committed set's one
# 64-channel case alone would cost more than all its other gradients together.
MAX_CHANNELS = 32
_AXES = (1, 2, 3)  # per tangent: N, H, W


def exact(shape) -> bool:
    """Whether the model carries the channel sources exactly for activations of
    ``shape`` (N, H, W, F): at most :data:`MAX_CHANNELS` channels and :data:`MAX_FLOPS`
    multiply-adds; otherwise it keeps spec 3's triangle-inequality form."""
    return shape[-1] <= MAX_CHANNELS and cost(shape) <= MAX_FLOPS


def cost(shape) -> float:
    """Multiply-adds of :func:`images` for activations of ``shape`` (N, H, W, F)."""
    n, h, w, f = shape
    return 2 * len(KINDS) * f * n * h * w * 9 * f * f * 6.0


def _f32(a):
    return np.asarray(a, np.float32)


def _conv_t(a, kernel):
    """3x3 SAME convolution (no bias) of tangents ``a`` (T, N, H, W, C). The
    convolutions of tangents run in float32 (an image's relative error of 1e-6 is
    nothing beside the spread it is multiplied by; the BatchNorm steps, where terms
    cancel, stay float64)."""
    t, n, h, w, c = a.shape
    ap = np.pad(_f32(a).reshape(t * n, h, w, c), ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = _f32(kernel)
    out = np.zeros((t * n, h, w, kernel.shape[-1]), np.float32)
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ k[i, j]
    return out.reshape(t, n, h, w, -1).astype(np.float64)


def _input_grad_t(cb, kernel):
    """``conv3x3_input_grad`` of tangents (T, N, H, W, F), in float32."""
    t, n, h, w, f = cb.shape
    c = _f32(cb).reshape(t * n, h, w, f)
    k = _f32(kernel)
    out = np.zeros((t * n, h + 2, w + 2, kernel.shape[2]), np.float32)
    for i in range(3):
        for j in range(3):
            out[:, i:i + h, j:j + w, :] += c @ k[i, j].T
    return out[:, 1:h + 1, 1:w + 1, :].reshape(t, n, h, w, -1).astype(np.float64)


def _kernel_grad(a, cb):
    """``conv3x3_kernel_grad`` for tangents: ``a`` or ``cb`` (or both) carry a leading
    tangent axis; the result has it too (T, 3, 3, C, F)."""
    a5 = _f32(a if a.ndim == 5 else a[None])
    c5 = _f32(cb if cb.ndim == 5 else cb[None])
    t = max(a5.shape[0], c5.shape[0])
    _, n, h, w, ci = a5.shape
    f = c5.shape[-1]
    ap = np.pad(a5, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.empty((t, 3, 3, ci, f))
    c5 = c5.reshape(c5.shape[0], -1, f)
    for i in range(3):
        for j in range(3):
            sl = ap[:, :, i:i + h, j:j + w, :].reshape(a5.shape[0], -1, ci)
            out[:, i, j] = np.matmul(sl.transpose(0, 2, 1), c5)
    return out


def _mean(a):
    return a.mean(axis=_AXES)[:, None, None, None, :]


def _sum(a):
    return a.sum(axis=_AXES)


def _moments(c):
    mean = c.mean(axis=(0, 1, 2))
    dev = c - mean
    inv = 1.0 / np.sqrt(np.square(dev).mean(axis=(0, 1, 2)) + EPSILON)
    return dev, dev * inv, inv


def images(x, params, stages, cot, sources, open1=None) -> dict:
    """``{grad name: (len(sources) * F, ...) array}``: for each ``(kind, layer)`` of
    ``sources`` and each channel ``f`` (in that order), the derivative of every gradient
    along a unit source of ``kind`` in channel ``f`` of BatchNorm ``layer`` (masks held:
    ``open1``, relu1's, default the oracle's; the output ReLU's is in ``cot["sum"]``).
    Tangents that are zero for all of ``sources`` are skipped (None), so sources that
    enter at the same place are best asked together."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    x = f64(x)
    nf = x.shape[-1]
    sources = list(sources)
    nt = len(sources) * nf
    blocks = {}
    for b, src in enumerate(sources):  # one channel per tangent, one block per source
        e = np.zeros((nt, 1, 1, 1, nf))
        e[b * nf:(b + 1) * nf, 0, 0, 0, :] = np.eye(nf)
        blocks[src] = e

    def seed(k, lay):
        return blocks.get((k, lay))

    def add(*terms):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def bn_forward(c, dc, lay):
        """Tangents ``(dz, drel, dout)`` of BatchNorm ``lay``'s forward (None: zero)."""
        dev, zhat, inv = _moments(c)
        dmean = add(None if dc is None else _mean(dc), seed("dm", lay))
        dvar = None if dc is None else 2.0 * _mean(dev * dc)
        drel = add(None if dvar is None else -dvar * 0.5 * inv * inv, seed("dr", lay))
        dz = add(None if dc is None else dc * inv, None if dmean is None else -dmean * inv,
                 None if drel is None else zhat * drel)
        scale = p[f"BatchNorm_{lay}"]["scale"]
        dout = add(None if dz is None else scale * dz, seed("da", lay))
        return dz, drel, dout

    def bn_backward(c, dz, drel, g, dg, lay):
        """Tangents of c_bar, scale_bar, beta_bar of BatchNorm ``lay``'s VJP."""
        _, zhat, inv = _moments(c)
        gi = p[f"BatchNorm_{lay}"]["scale"] * inv
        mgz = (g * zhat).mean(axis=(0, 1, 2))
        dmg = add(None if dg is None else _mean(dg), seed("dg", lay))
        g_dz = None if dz is None else g * dz
        dmgz = add(None if dg is None else _mean(dg * zhat),
                   None if g_dz is None else _mean(g_dz), seed("dgz", lay))
        if drel is None and dg is None and dz is None and dmg is None and dmgz is None:
            return None, np.zeros((nt, nf)), np.zeros((nt, nf))
        bracket = g - g.mean(axis=(0, 1, 2)) - zhat * mgz
        dcbar = add(None if drel is None else gi * drel * bracket,
                    None if dg is None else gi * dg, None if dmg is None else -gi * dmg,
                    None if dz is None else -gi * dz * mgz,
                    None if dmgz is None else -gi * zhat * dmgz)
        dscale = add(None if dg is None else _sum(dg * zhat),
                     None if g_dz is None else _sum(g_dz))
        dbeta = None if dg is None else _sum(dg)
        dcbar = np.broadcast_to(dcbar, (nt,) + g.shape)  # a seed alone is per channel
        zero = np.zeros((nt, nf))
        return dcbar, zero if dscale is None else dscale, zero if dbeta is None else dbeta

    st = stages
    open1 = st["bn1"] > 0 if open1 is None else open1
    # forward: conv1 is exact (x and the kernels are inputs)
    dz0, drel0, dbn1 = bn_forward(st["conv1"], None, 0)
    drelu1 = None if dbn1 is None else dbn1 * open1
    dconv2 = None if drelu1 is None else _conv_t(drelu1, p["Conv_1"]["kernel"])
    dz1, drel1, _ = bn_forward(st["conv2"], dconv2, 1)
    # backward: y_bar and the output mask are fixed, so sum_bar has no tangent
    dc2b, ds1, db1 = bn_backward(st["conv2"], dz1, drel1, cot["sum"], None, 1)
    k1_shape = (nt,) + p["Conv_1"]["kernel"].shape
    dk1 = add(None if drelu1 is None else _kernel_grad(drelu1, cot["conv2"]),
              None if dc2b is None else _kernel_grad(st["relu1"], dc2b))
    dbn1b = None if dc2b is None else _input_grad_t(dc2b, p["Conv_1"]["kernel"]) * open1
    dc1b, ds0, db0 = bn_backward(st["conv1"], dz0, drel0, cot["bn1"], dbn1b, 0)
    zero_x = np.zeros((nt,) + x.shape)
    return {"x": zero_x if dc1b is None else _input_grad_t(dc1b, p["Conv_0"]["kernel"]),
            "Conv_0/kernel": (np.zeros((nt,) + p["Conv_0"]["kernel"].shape) if dc1b is None
                              else _kernel_grad(x, dc1b)),
            "Conv_0/bias": np.zeros((nt, nf)) if dc1b is None else _sum(dc1b),
            "BatchNorm_0/scale": ds0, "BatchNorm_0/bias": db0,
            "Conv_1/kernel": np.zeros(k1_shape) if dk1 is None else dk1,
            "Conv_1/bias": np.zeros((nt, nf)) if dc2b is None else _sum(dc2b),
            "BatchNorm_1/scale": ds1, "BatchNorm_1/bias": db1}


def source_k(x, params, stages, cot, sigmas: dict, open1=None) -> dict:
    """``{grad name: (k, ks)}``: the root-sum-square images of every channel source.
    ``sigmas[(kind, layer)] = (sigma, sigma_s)``, per-channel standard deviations (float32
    part and per unit ``u_conv``)."""
    acc = {t: [0.0, 0.0] for t in GRAD_TENSORS}
    n, h, w, _ = np.shape(x)
    if n * h * w == 1:  # c - mean and g - mean(g) are exactly 0: no source moves anything
        return {t: (0.0, 0.0) for t in GRAD_TENSORS}
    live = [(src, np.asarray(sg, np.float64), np.asarray(sg_s, np.float64))
            for src, (sg, sg_s) in sigmas.items() if np.any(sg) or np.any(sg_s)]
    per_source = np.shape(x)[-1] * int(np.prod(np.shape(x)))  # tangent elements
    chunk = max(1, CHUNK_ELEMENTS // per_source)
    for group in GROUPS:  # sources entering at the same place share one pass
        members = [t for t in live if t[0] in group]
        for i in range(0, len(members), chunk):
            _accumulate(acc, x, params, stages, cot, members[i:i + chunk], open1)
    return {t: (np.sqrt(v), np.sqrt(vs)) for t, (v, vs) in acc.items()}


def _accumulate(acc, x, params, stages, cot, todo, open1):
    """Add the squared images of the sources ``todo`` (``(source, sigma, sigma_s)``),
    weighted by their variances, to ``acc``."""
    if todo:
        im_all = images(x, params, stages, cot, [t[0] for t in todo], open1)
        sig = np.concatenate([t[1] for t in todo])
        sig_s = np.concatenate([t[2] for t in todo])
        for t, im in im_all.items():
            im2 = np.square(im)
            b = (slice(None),) + (None,) * (im2.ndim - 1)
            acc[t][0] = acc[t][0] + (np.square(sig)[b] * im2).sum(axis=0)
            acc[t][1] = acc[t][1] + (np.square(sig_s)[b] * im2).sum(axis=0)


__all__ = ["GRAD_TENSORS", "KINDS", "MAX_CHANNELS", "MAX_FLOPS", "cost", "exact", "images",
           "source_k"]
