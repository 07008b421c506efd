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
from resblock.spec.error_model import pad_hw
from resblock.spec.error_spread import channel_patches

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
# BatchNorm_1's output rounding moves no gradient: with the masks held nothing in the
# backward reads bn2 (y_bar and the output mask fix sum_bar), so its image is exactly 0
# and source_k skips it (tests/spec/test_source_images.py checks the zero).
NO_IMAGE = frozenset({("da", 1)})
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


class _Diag:
    """Tangents packed by channel: ``a[b, ..., c]`` is the value of tangent ``b F + c``
    (source ``b``'s in channel ``c``) in its own channel ``c``; it is 0 in every other
    channel. A channel source's tangent keeps this form until a convolution mixes the
    channels, and in it every step costs ``1/F`` of the dense form's: elementwise
    steps and per-channel reductions of BatchNorm broadcast over the channel axis
    exactly as they do on the dense tangents."""

    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a


def _dense(v):
    """``(B F, ...)`` dense tangents of packed ones; dense ones and None as they are."""
    if not isinstance(v, _Diag):
        return v
    a = v.a
    b, f = a.shape[0], a.shape[-1]
    out = np.zeros((b, f) + a.shape[1:], a.dtype)
    for c in range(f):
        out[:, c, ..., c] = a[..., c]
    return out.reshape((b * f,) + a.shape[1:])


def _columns(v: _Diag):
    """``(d, ch)``: packed tangents one channel each, ``d`` (B F, N, H, W) float32 and
    ``ch`` the channel of each."""
    a = v.a
    b, f = a.shape[0], a.shape[-1]
    d = np.moveaxis(_f32(a), -1, 1).reshape((b * f,) + a.shape[1:-1])
    return d, np.tile(np.arange(f), b)


def _conv_t(a, kernel):
    """3x3 SAME convolution (no bias) of tangents ``a`` (T, N, H, W, C), dense out. The
    convolutions of tangents run in float32 (an image's relative error of 1e-6 is
    nothing beside the spread it is multiplied by; the BatchNorm steps, where terms
    cancel, stay float64). Packed ``a`` (one input channel a tangent) costs ``1/C`` of
    a dense one: an outer product a tap."""
    k = _f32(kernel)
    if isinstance(a, _Diag):
        # one product of each tangent's 3x3 patches with its channel's (9, F) taps: 5x
        # faster than nine broadcast outer products at 32x32x16
        d, ch = _columns(a)
        t, n, h, w = d.shape
        kc = k.reshape(9, k.shape[2], k.shape[3])[:, ch, :].transpose(1, 0, 2)  # (T, 9, F)
        return np.matmul(channel_patches(np.moveaxis(d, 0, -1)), kc).reshape(
            t, n, h, w, -1).astype(np.float64)
    t, n, h, w, c = a.shape
    ap = pad_hw(_f32(a).reshape(t * n, h, w, c))
    out = np.zeros((t * n, h, w, kernel.shape[-1]), np.float32)
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ k[i, j]
    return out.reshape(t, n, h, w, -1).astype(np.float64)


def _input_grad_t(cb, kernel):
    """``conv3x3_input_grad`` of tangents (T, N, H, W, F), dense out, in float32 (packed
    ``cb``: ``1/F`` of the cost). The transpose of a SAME convolution is the SAME
    convolution with the kernel turned half a turn and its channels swapped: summed into
    one output, not scattered (1.3x), and one product a packed tangent."""
    return _conv_t(cb, np.ascontiguousarray(_f32(kernel)[::-1, ::-1].transpose(0, 1, 3, 2)))


def _kernel_grad(a, cb):
    """``conv3x3_kernel_grad`` for tangents, dense out (T, 3, 3, C, F): ``a`` or ``cb``
    (or both) carry a leading tangent axis. Packed ``a`` (with a plain ``cb``) fills one
    input row of its tangent's kernel gradient, packed ``cb`` (with a plain ``a``) one
    output column, at ``1/C`` or ``1/F`` of the cost."""
    if isinstance(a, _Diag) or isinstance(cb, _Diag):
        packed_a = isinstance(a, _Diag)
        d, ch = _columns(a if packed_a else cb)
        other = _f32(cb if packed_a else a)  # (N, H, W, F) or (N, H, W, C)
        t, n, h, w = d.shape
        ci = a.a.shape[-1] if packed_a else a.shape[-1]
        f = cb.shape[-1] if packed_a else cb.a.shape[-1]
        out = np.zeros((t, 3, 3, ci, f))
        rows = np.arange(t)
        if packed_a:  # shift the tangent against the cotangent
            dp = pad_hw(d, axes=(2, 3))
            c2 = other.reshape(-1, f)
            for i in range(3):
                for j in range(3):
                    out[rows, i, j, ch, :] = dp[:, :, i:i + h, j:j + w].reshape(t, -1) @ c2
        else:  # shift the activation against the tangent
            ap = pad_hw(other)
            d2 = d.reshape(t, -1)
            for i in range(3):
                for j in range(3):
                    out[rows, i, j, :, ch] = d2 @ ap[:, i:i + h, j:j + w, :].reshape(-1, ci)
        return out
    a5 = _f32(a if a.ndim == 5 else a[None])
    c5 = _f32(cb if cb.ndim == 5 else cb[None])
    t = max(a5.shape[0], c5.shape[0])
    _, n, h, w, ci = a5.shape
    f = c5.shape[-1]
    ap = pad_hw(a5)
    out = np.empty((t, 3, 3, ci, f))
    c5 = c5.reshape(c5.shape[0], -1, f)
    for i in range(3):
        for j in range(3):
            sl = ap[:, :, i:i + h, j:j + w, :].reshape(a5.shape[0], -1, ci)
            out[:, i, j] = np.matmul(sl.transpose(0, 2, 1), c5)
    return out


def _mean(a):
    return a.mean(axis=_AXES)[:, None, None, None, :]


def _sum(v):
    """Per-channel sums of tangents, packed if ``v`` is."""
    if isinstance(v, _Diag):
        return _Diag(v.a.sum(axis=_AXES))
    return v.sum(axis=_AXES)


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
    Sources are computed a :data:`GROUPS` member at a time (where their tangents start),
    so tangents that are zero for a group are skipped."""
    sources = list(sources)
    nf = np.shape(x)[-1]
    rows = {}
    for group in GROUPS:
        mine = [s for s in sources if s in group]
        if mine == sources:  # one group (as source_k asks): its rows are in order already
            return _group_images(x, params, stages, cot, mine, open1)
        if mine:
            im = _group_images(x, params, stages, cot, mine, open1)
            for b, src in enumerate(mine):
                rows[src] = {t: v[b * nf:(b + 1) * nf] for t, v in im.items()}
    if set(rows) != set(sources):
        unknown = sorted(set(sources) - set(rows))
        raise ValueError(f"unknown channel sources {unknown}; expected (kind, layer) with "
                         f"kind one of {KINDS} and layer 0 or 1")
    if len(sources) == 1:
        return rows[sources[0]]
    return {t: np.concatenate([rows[s][t] for s in sources]) for t in GRAD_TENSORS}


def _group_images(x, params, stages, cot, sources, open1) -> dict:
    """:func:`images` for sources of one :data:`GROUPS` member: their tangents are
    packed (:class:`_Diag`) until a convolution mixes the channels."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    x = f64(x)
    nf = x.shape[-1]
    nb = len(sources)
    nt = nb * nf
    blocks = {}
    for b, src in enumerate(sources):  # one block per source, every channel at once
        e = np.zeros((nb, 1, 1, 1, nf))
        e[b] = 1.0
        blocks[src] = _Diag(e)

    def seed(k, lay):
        return blocks.get((k, lay))

    def add(*terms):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def raw_fn(*tangents):
        """How to read tangents in one step: their packed arrays when none is dense,
        else all dense (and the wrapper for the step's results)."""
        if any(isinstance(t, np.ndarray) for t in tangents):
            return _dense, lambda v: v
        return (lambda v: None if v is None else v.a), (lambda v: None if v is None
                                                        else _Diag(v))

    def bn_forward(c, dc, lay):
        """Tangents ``(dz, drel, dout)`` of BatchNorm ``lay``'s forward (None: zero)."""
        sm, sr, sa = seed("dm", lay), seed("dr", lay), seed("da", lay)
        rd, wrap = raw_fn(dc, sm, sr, sa)
        dc, sm, sr, sa = rd(dc), rd(sm), rd(sr), rd(sa)
        dev, zhat, inv = _moments(c)
        dmean = add(None if dc is None else _mean(dc), sm)
        dvar = None if dc is None else 2.0 * _mean(dev * dc)
        drel = add(None if dvar is None else -dvar * 0.5 * inv * inv, sr)
        dz = add(None if dc is None else dc * inv, None if dmean is None else -dmean * inv,
                 None if drel is None else zhat * drel)
        scale = p[f"BatchNorm_{lay}"]["scale"]
        dout = add(None if dz is None else scale * dz, sa)
        return wrap(dz), wrap(drel), wrap(dout)

    def bn_backward(c, dz, drel, g, dg, lay):
        """Tangents of c_bar, scale_bar, beta_bar of BatchNorm ``lay``'s VJP. Each
        full-size product is formed once (a mean is its sum over ``n``, as NumPy divides)
        and c_bar's terms are summed into the first in order: the bits of the formula
        written term by term, in about half the passes over the tangents."""
        sg, sgz = seed("dg", lay), seed("dgz", lay)
        rd, wrap = raw_fn(dz, drel, dg, sg, sgz)
        dz, drel, dg, sg, sgz = rd(dz), rd(drel), rd(dg), rd(sg), rd(sgz)
        _, zhat, inv = _moments(c)
        n = c.shape[0] * c.shape[1] * c.shape[2]
        gi = p[f"BatchNorm_{lay}"]["scale"] * inv
        mgz = (g * zhat).mean(axis=(0, 1, 2))
        s_dg = s_dgz = s_gdz = None
        if dg is not None:  # dense: a product of a transposed convolution
            s_dg = dg.sum(axis=_AXES)
            s_dgz = (dg * zhat).sum(axis=_AXES)
        if dz is not None:
            s_gdz = (g * dz).sum(axis=_AXES)

        def per(s):  # a per-channel mean in the tangents' broadcast shape
            return None if s is None else (s / n)[:, None, None, None, :]

        dmg = add(per(s_dg), sg)
        dmgz = add(per(s_dgz), per(s_gdz), sgz)
        if drel is None and dg is None and dz is None and dmg is None and dmgz is None:
            return None, None, None
        bracket = g - g.mean(axis=(0, 1, 2)) - zhat * mgz
        dcbar = None
        for term in (lambda: gi * drel * bracket if drel is not None else None,
                     lambda: gi * dg if dg is not None else None,
                     lambda: -gi * dmg if dmg is not None else None,
                     lambda: -gi * dz * mgz if dz is not None else None,
                     lambda: -gi * zhat * dmgz if dmgz is not None else None):
            t = term()
            if t is None:
                continue
            if dcbar is None:
                dcbar = t
            elif dcbar.shape == np.broadcast_shapes(dcbar.shape, t.shape):
                dcbar += t  # a fresh product: summed in place, the same bits
            else:
                dcbar = dcbar + t
            del t
        dscale = add(s_dgz, s_gdz)
        # a seed alone is per channel
        dcbar = np.broadcast_to(dcbar, dcbar.shape[:1] + g.shape)
        return wrap(dcbar), wrap(dscale), wrap(s_dg)

    def dense_or_zero(v, shape):
        return np.zeros((nt,) + shape) if v is None else _dense(v)

    st = stages
    open1 = st["bn1"] > 0 if open1 is None else open1
    k0, k1 = p["Conv_0"]["kernel"], p["Conv_1"]["kernel"]
    # forward: conv1 is exact (x and the kernels are inputs)
    dz0, drel0, dbn1 = bn_forward(st["conv1"], None, 0)
    drelu1 = None if dbn1 is None else _Diag(dbn1.a * open1)
    dconv2 = None if drelu1 is None else _conv_t(drelu1, k1)
    dz1, drel1, _ = bn_forward(st["conv2"], dconv2, 1)
    # backward: y_bar and the output mask are fixed, so sum_bar has no tangent
    dc2b, ds1, db1 = bn_backward(st["conv2"], dz1, drel1, cot["sum"], None, 1)
    dk1 = add(None if drelu1 is None else _kernel_grad(drelu1, cot["conv2"]),
              None if dc2b is None else _kernel_grad(st["relu1"], dc2b))
    dbn1b = None if dc2b is None else _input_grad_t(dc2b, k1) * open1
    dc1b, ds0, db0 = bn_backward(st["conv1"], dz0, drel0, cot["bn1"], dbn1b, 0)
    return {"x": (np.zeros((nt,) + x.shape) if dc1b is None
                  else _input_grad_t(dc1b, k0)),
            "Conv_0/kernel": (np.zeros((nt,) + k0.shape) if dc1b is None
                              else _kernel_grad(x, dc1b)),
            "Conv_0/bias": dense_or_zero(None if dc1b is None else _sum(dc1b), (nf,)),
            "BatchNorm_0/scale": dense_or_zero(ds0, (nf,)),
            "BatchNorm_0/bias": dense_or_zero(db0, (nf,)),
            "Conv_1/kernel": np.zeros((nt,) + k1.shape) if dk1 is None else dk1,
            "Conv_1/bias": dense_or_zero(None if dc2b is None else _sum(dc2b), (nf,)),
            "BatchNorm_1/scale": dense_or_zero(ds1, (nf,)),
            "BatchNorm_1/bias": dense_or_zero(db1, (nf,))}


def source_k(x, params, stages, cot, sigmas: dict, open1=None) -> dict:
    """``{grad name: (k, ks)}``: the root-sum-square images of every channel source.
    ``sigmas[(kind, layer)] = (sigma, sigma_s)``, per-channel standard deviations (float32
    part and per unit ``u_conv``)."""
    acc = {t: [0.0, 0.0] for t in GRAD_TENSORS}
    n, h, w, _ = np.shape(x)
    if n * h * w == 1:  # c - mean and g - mean(g) are exactly 0: no source moves anything
        return {t: (0.0, 0.0) for t in GRAD_TENSORS}
    live = [(src, np.asarray(sg, np.float64), np.asarray(sg_s, np.float64))
            for src, (sg, sg_s) in sigmas.items()
            if src not in NO_IMAGE and (np.any(sg) or np.any(sg_s))]
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
        w = np.stack([np.square(sig), np.square(sig_s)])  # (2, sources)
        for t, im in im_all.items():
            im2 = np.square(im).reshape(len(sig), -1)
            v = (w @ im2).reshape((2,) + im.shape[1:])  # one product: no weighted copies
            acc[t][0] = acc[t][0] + v[0]
            acc[t][1] = acc[t][1] + v[1]


__all__ = ["GRAD_TENSORS", "KINDS", "MAX_CHANNELS", "MAX_FLOPS", "cost", "exact", "images",
           "source_k"]
