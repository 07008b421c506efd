"""The float32 error model of the backward pass: per-element budgets and spreads of every
gradient (spec section 10.4).

The spread model of :mod:`resblock.spec.error_spread` carried through the VJP of spec
section 10, stage by stage, from the exact cotangent ``y_bar``. Rounding errors are
independent and zero-mean (Higham and Mary), so they add in quadrature where a reduction
sums them; only errors that are the same for a whole channel add coherently. A gradient
element's error has three parts:

* ``v``, the variance of element-wise independent errors: the backward's own rounding
  (a sum of ``n`` terms ``t`` has variance at most ``u^2 n ((sum t)^2 + sum t^2)``; the
  transposed convolutions sum ``9F + 1`` terms, the weight gradients ``N*H*W`` per tap)
  and the forward's independent errors of the convolution outputs (they move ``zhat``
  in BatchNorm's backward and ``relu1`` in the weight gradient of ``Conv_1``);
* ``k``, a standard deviation of errors shared by a channel: the forward's rounding of
  each channel's batch mean and ``inv = 1/sqrt(var + eps)``, and the backward's of the
  channel reductions ``mean(g)`` and ``mean(g zhat)``. Their effect on the gradients of
  the layer they belong to is computed *exactly*, as the first-order change of the VJP
  along each error: every such error moves ``c_bar`` along a per-channel combination of
  ``1``, ``zhat`` and ``c_bar``, so its effect on a kernel gradient is the same
  combination of ``KG(a, 1)``, ``KG(a, zhat)`` and the kernel gradient itself. Beyond
  that layer they propagate by the triangle inequality over positions and in
  quadrature over channels (9 for the taps, Cauchy-Schwarz), as in the forward spread;
* ``m``, the ReLU masks, a hard term: where a pre-activation's oracle value lies within
  ``S`` forward spreads (``|p| <= S (sigma + u_conv sigma_conv)``) a correct port may
  see either sign, so that element's cotangent may be 0 or the incoming one; the
  difference propagates by the triangle inequality. Where the sign is exact in every
  float32 evaluation it is not ambiguous: a channel whose BatchNorm scale is 0 outputs
  its bias exactly (``(c - mean) * 0 + beta`` in either form), so the ReLU after it
  sees ``beta`` (``relu1``) or ``fl(beta + x)`` (the output), whose sign is exact. A
  channel of equal values (variance 0, ``n > 1``) stays ambiguous: Flax gives exactly 0
  there, PyTorch's CPU ``F.batch_norm`` about 1e-7 (spec 10.2).

The stored per-element budget is ``S sqrt(v + k^2) + m`` (``S`` the safety factor of
spec section 8: ``sqrt(v + k^2)`` estimates a root-mean-square error, and a correct
port's element errs by more than ``S = 8`` of them with probability ``< 1e-15`` if its
errors are Gaussian); the spread, for the aggregate test, is ``sqrt(v + k^2 + m^2)``.
Both have a ``_conv`` counterpart per unit ``u_conv`` (convolution inputs rounded to
TF32 or bfloat16, forward and backward alike). At ``n = 1`` both BatchNorm input
gradients are exactly 0 (``g - mean(g)`` and ``zhat`` are exactly 0), and so is the
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec import error_model, error_spread, source_images
from resblock.spec.backward import conv3x3_input_grad, conv3x3_kernel_grad
from resblock.spec.constants import EPSILON, PARAM_NAMES, load
from resblock.spec.error_model import FLOOR, SAFETY, U
from resblock.spec.error_spread import CONV_ROUNDING_VAR, sum_var

GRAD_TENSORS = ("x",) + PARAM_NAMES
_PROFILES = load()["tolerance"]["profiles"]
U_TF32 = _PROFILES["tf32-conv"]["conv_unit_roundoff"]
U_BF16 = _PROFILES["bf16-conv"]["conv_unit_roundoff"]
_AXES = (0, 1, 2)


def _mean(a):
    return np.asarray(a, np.float64).mean(axis=_AXES)


def _sum(a):
    return np.asarray(a, np.float64).sum(axis=_AXES)


@dataclass(frozen=True)
class GErr:
    """The error of a cotangent or gradient: independent variance ``v``, channel-shared
    standard deviation ``k`` and mask term ``m``; ``vs``, ``ks``, ``ms`` per unit
    ``u_conv``."""

    v: np.ndarray
    k: np.ndarray
    m: np.ndarray
    vs: np.ndarray
    ks: np.ndarray
    ms: np.ndarray

    def budget(self):
        return SAFETY * np.sqrt(self.v + np.square(self.k)) + self.m

    def budget_conv(self):
        return SAFETY * np.sqrt(self.vs + np.square(self.ks)) + self.ms

    def spread(self):
        return np.sqrt(self.v + np.square(self.k) + np.square(self.m))

    def spread_conv(self):
        return np.sqrt(self.vs + np.square(self.ks) + np.square(self.ms))


def _zero(shape) -> GErr:
    z = np.zeros(shape)
    return GErr(z, z, z, z, z, z)


@dataclass(frozen=True)
class Source:
    """A per-channel error (standard deviation ``sigma``, and ``sigma_s`` per unit
    ``u_conv``) that moves ``c_bar`` along ``alpha + beta zhat + gamma c_bar``."""

    sigma: np.ndarray
    sigma_s: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray


def _along(sources, one, zhat, cbar, axis=-1):
    """Root-sum-square effect of ``sources`` given the images of the three directions
    (``one``, ``zhat``, ``cbar``) under a linear map; per-channel coefficients broadcast
    along ``axis``. Returns ``(float32 part, per unit u_conv)``."""

    def shape(a):
        a = np.asarray(a, np.float64)
        if axis == -1 or a.ndim == 0:
            return a
        return a.reshape(a.shape + (1,) * (-1 - axis))

    e = s = 0.0
    for src in sources:
        d = shape(src.alpha) * one + shape(src.beta) * zhat + shape(src.gamma) * cbar
        e = e + np.square(shape(src.sigma) * d)
        s = s + np.square(shape(src.sigma_s) * d)
    return np.sqrt(e), np.sqrt(s)


def relu_ambiguity(pre, e_pre, s_pre, exact=None):
    """Per-element weights ``(w_e, w_s)`` of a ReLU mask that a correct port may flip:
    ``w_e`` 1 where ``|pre| <= S e`` (fp32), ``e`` the forward spread of the
    pre-activation (a correct port's error exceeds ``S`` spreads with probability below
    1e-15); ``w_s`` the extra elements of the tf32 and bf16 profiles per unit
    ``u_conv`` (``s`` the spread per unit ``u_conv``). ``exact``: elements whose sign
    is exact in float32 (never ambiguous)."""
    a = np.abs(pre)
    amb = [a <= SAFETY * (e_pre + u * s_pre) for u in (0.0, U_TF32, U_BF16)]
    if exact is not None:
        amb = [m & ~exact for m in amb]
    w_e = amb[0].astype(np.float64)
    w_s = (amb[1] & ~amb[0]) / U_TF32 + (amb[2] & ~amb[1]) / U_BF16
    return w_e, w_s


def relu_backward(pre, g_out, err: GErr, w_e, w_s, mask=None) -> GErr:
    """Errors of ``g_out * (pre > 0)``: the incoming ones where the mask is (or may be)
    open, and ``|g_out|`` where it may flip (``w_e``, ``w_s`` of :func:`relu_ambiguity`)."""
    mask = (pre > 0) if mask is None else mask
    open_ = (mask | (w_e > 0) | (w_s > 0)).astype(np.float64)
    ag = np.abs(g_out)
    return GErr(err.v * open_, err.k * open_, err.m * open_ + w_e * ag,
                err.vs * open_, err.ks * open_, err.ms * open_ + w_s * ag)


@dataclass(frozen=True)
class BatchNormBackward:
    """What the BatchNorm backward model gives: errors of ``c_bar`` (``rest``: all but
    the channel sources, whose per-element effect ``k_src`` it adds), the channel
    sources, the gradients' errors, and the ``zhat`` and ``c_bar`` they act along."""

    cbar: GErr
    k_rest: np.ndarray
    ks_rest: np.ndarray
    sources: tuple
    scale: GErr
    beta: GErr
    zhat: np.ndarray
    cbar_value: np.ndarray


def batch_norm_backward(c, c_err, ch, scale, g, g_err: GErr) -> BatchNormBackward:
    """Errors of ``c_bar``, ``scale_bar`` and ``beta_bar`` of a training-mode BatchNorm
    (``c``: the float64 conv output; ``c_err``, ``ch``: its forward spread and channel
    errors; ``g``: the oracle's cotangent of the BatchNorm output, ``g_err`` its error)."""
    n = c.shape[0] * c.shape[1] * c.shape[2]
    f = c.shape[-1]
    mean = _mean(c)
    dev = c - mean
    var = _mean(np.square(dev))
    inv = 1.0 / np.sqrt(var + EPSILON)
    zhat = dev * inv
    gi = scale * inv
    beta_v = sum_var(n, _sum(g), _sum(np.square(g))) + _sum(g_err.v)
    beta = GErr(beta_v, _sum(g_err.k), _sum(g_err.m), _sum(g_err.vs), _sum(g_err.ks),
                _sum(g_err.ms))
    if n == 1:  # c - mean and g - mean(g) are exactly 0: c_bar and scale_bar are exact
        z = _zero(c.shape)
        return BatchNormBackward(z, z.k, z.k, (), _zero((f,)), beta, zhat, np.zeros(c.shape))
    az = np.abs(zhat)
    ag = np.abs(g)
    agi = np.abs(gi)
    gz = g * zhat
    mg = _mean(g)
    mgz = _mean(gz)
    bracket = g - mg - zhat * mgz
    cbar = gi * bracket
    inv2 = np.square(inv)
    v_zh, vs_zh = inv2 * c_err.v, inv2 * c_err.vs
    k_zh, ks_zh = inv * (c_err.k + c_err.kx), inv * (c_err.ks + c_err.kxs)

    def mean_terms(a):
        return a + _mean(a) + az * _mean(az * a)

    v = (np.square(gi) * (g_err.v + np.square(mgz) * v_zh)
         + U * U * np.square(gi) * (np.square(g) + np.square(mg) + np.square(zhat * mgz)
                                    + 4.0 * np.square(bracket)))
    vs = np.square(gi) * (g_err.vs + np.square(mgz) * vs_zh)
    k_rest = agi * (mean_terms(g_err.k) + np.abs(mgz) * k_zh + az * _mean(ag * k_zh))
    ks_rest = agi * (mean_terms(g_err.ks) + np.abs(mgz) * ks_zh + az * _mean(ag * ks_zh))
    m = agi * mean_terms(g_err.m)
    ms = agi * mean_terms(g_err.ms)
    sum_gz2 = _sum(np.square(gz))
    sigma_mg = np.sqrt(sum_var(n, _sum(g), _sum(np.square(g))) / (n * n)
                       + U * U * mg * mg + _sum(g_err.v) / (n * n))
    sigma_mgz = np.sqrt((sum_var(n, _sum(gz), sum_gz2) + U * U * sum_gz2
                         + _sum(np.square(zhat) * g_err.v)
                         + _sum(np.square(g) * v_zh)) / (n * n))
    sigma_mgz_s = np.sqrt((_sum(np.square(zhat) * g_err.vs)
                           + _sum(np.square(g) * vs_zh)) / (n * n))
    zero = np.zeros(f)
    sources = (
        Source(ch.mean, ch.mean_s, gi * inv * mgz, gi * inv * mg, zero),
        Source(ch.rel, ch.rel_s, zero, -2.0 * gi * mgz, np.ones(f)),
        Source(sigma_mg, np.sqrt(_sum(g_err.vs)) / n, -gi, zero, zero),
        Source(sigma_mgz, sigma_mgz_s, zero, -gi, zero),
    )
    k_src, ks_src = _along(sources, 1.0, zhat, cbar)
    cb_err = GErr(v, k_rest + k_src, m, vs, ks_rest + ks_src, ms)
    scale_bar = _sum(gz)
    scale_err = GErr(
        sum_var(n, scale_bar, sum_gz2) + U * U * sum_gz2 + _sum(np.square(zhat) * g_err.v)
        + _sum(np.square(g) * v_zh),
        _sum(az * g_err.k) + _sum(ag * k_zh)
        + np.hypot(inv * _sum(g) * ch.mean, scale_bar * ch.rel),
        _sum(az * g_err.m),
        _sum(np.square(zhat) * g_err.vs) + _sum(np.square(g) * vs_zh),
        _sum(az * g_err.ks) + _sum(ag * ks_zh)
        + np.hypot(inv * _sum(g) * ch.mean_s, scale_bar * ch.rel_s),
        _sum(az * g_err.ms))
    return BatchNormBackward(cb_err, k_rest, ks_rest, sources, scale_err, beta, zhat, cbar)


def conv_backward(a, a_err, a_sources, kernel, bn: BatchNormBackward):
    """Errors of ``a_bar``, ``k_bar`` and ``b_bar`` of ``c = conv3x3(a, k) + b`` whose
    output feeds the BatchNorm of ``bn``. ``a_err``: the forward spread of ``a`` without
    the channel errors of the BatchNorm before it, which ``a_sources`` carries (pairs of
    a direction tensor and per-channel ``(sigma, sigma_s)``); None for an exact ``a``."""
    n = a.shape[0] * a.shape[1] * a.shape[2]
    f = bn.cbar_value.shape[-1]
    cb, e = bn.cbar_value, bn.cbar
    w2, aw = np.square(kernel), np.abs(kernel)
    a_bar = conv3x3_input_grad(cb, kernel)
    t_in = conv3x3_input_grad(np.square(cb), w2)
    in_err = GErr(
        conv3x3_input_grad(e.v, w2) + U * U * (9 * f + 1) * (t_in + np.square(a_bar)),
        np.sqrt(9.0 * conv3x3_input_grad(np.square(e.k), w2)),
        conv3x3_input_grad(e.m, aw),
        conv3x3_input_grad(e.vs, w2) + CONV_ROUNDING_VAR * t_in,
        np.sqrt(9.0 * conv3x3_input_grad(np.square(e.ks), w2)),
        conv3x3_input_grad(e.ms, aw))
    a2, aa = np.square(a), np.abs(a)
    k_bar = conv3x3_kernel_grad(a, cb)
    t_k = conv3x3_kernel_grad(a2, np.square(cb))
    k_src, ks_src = _along(bn.sources, conv3x3_kernel_grad(a, np.ones_like(cb)),
                           conv3x3_kernel_grad(a, bn.zhat), k_bar)
    v = conv3x3_kernel_grad(a2, e.v) + U * U * n * (t_k + np.square(k_bar))
    vs = conv3x3_kernel_grad(a2, e.vs) + CONV_ROUNDING_VAR * t_k
    k = conv3x3_kernel_grad(aa, bn.k_rest) + k_src
    ks = conv3x3_kernel_grad(aa, bn.ks_rest) + ks_src
    if a_err is not None:
        cb2, acb = np.square(cb), np.abs(cb)
        v = v + conv3x3_kernel_grad(a_err.v, cb2)
        vs = vs + conv3x3_kernel_grad(a_err.vs, cb2)
        k = k + conv3x3_kernel_grad(a_err.k, acb)
        ks = ks + conv3x3_kernel_grad(a_err.ks, acb)
        ae = ase = 0.0
        for direction, (sig, sig_s) in a_sources:
            d = conv3x3_kernel_grad(direction, cb)
            ae = ae + np.square(sig[:, None] * d)
            ase = ase + np.square(sig_s[:, None] * d)
        k, ks = k + np.sqrt(ae), ks + np.sqrt(ase)
    k_err = GErr(v, k, conv3x3_kernel_grad(aa, e.m), vs, ks, conv3x3_kernel_grad(aa, e.ms))
    b_src, bs_src = _along(bn.sources, float(n), _sum(bn.zhat), _sum(cb))
    b_err = GErr(_sum(e.v) + sum_var(n, _sum(cb), _sum(np.square(cb))),
                 _sum(bn.k_rest) + b_src, _sum(e.m), _sum(e.vs), _sum(bn.ks_rest) + bs_src,
                 _sum(e.ms))
    return in_err, k_err, b_err


@dataclass(frozen=True)
class BackwardModel:
    """Per gradient of :data:`GRAD_TENSORS`: the stored budgets (``budgets``, an
    :class:`resblock.spec.error_model.Budgets`) and spreads (``sigma``, ``sigma_conv``)."""

    budgets: error_model.Budgets
    sigma: dict
    sigma_conv: dict


@blas.single_threaded
def model(x, params, batch_stats, y_bar, bw, spread=None) -> BackwardModel:
    """The backward model of a case. ``bw``: the oracle's
    :class:`resblock.spec.backward.BackwardResult` of the case; ``spread``: the case's
    :func:`resblock.spec.error_spread.forward_spread` with its errors kept, if the caller
    has it (the generator computes it once for the forward's spreads and this model)."""
    errs = raw_errors(x, params, batch_stats, y_bar, bw, spread=spread)
    up = 1.0 + 2.0 ** -18  # covers the float32 evaluation of the non-negative sums

    def f32(a):
        return (np.asarray(a, np.float64) * up).astype(np.float32)

    return BackwardModel(
        budgets=error_model.Budgets(fp32={t: f32(e.budget()) for t, e in errs.items()},
                                    conv={t: f32(e.budget_conv()) for t, e in errs.items()}),
        sigma={t: error_spread.stored(e.spread()) for t, e in errs.items()},
        sigma_conv={t: error_spread.stored(e.spread_conv()) for t, e in errs.items()})


def budgets(x, params, batch_stats, y_bar, bw) -> error_model.Budgets:
    """Stored backward budgets (float32, rounded up)."""
    return model(x, params, batch_stats, y_bar, bw).budgets


def raw_errors(x, params, batch_stats, y_bar, bw, *, exact_masks: bool = False,
               spread=None) -> dict:
    """The unscaled model: a :class:`GErr` per name of :data:`GRAD_TENSORS`. With
    ``exact_masks`` no ReLU mask is ambiguous (``m = 0``): the errors of a port that sees
    the oracle's masks, or whose flipped masks have been taken out exactly
    (:mod:`resblock.spec.mask_flips`)."""
    if exact_masks:
        def ambiguity(pre, e, s, exact=None):
            z = np.zeros(np.shape(pre))
            return z, z
    else:
        ambiguity = relu_ambiguity
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = bw.forward.stages
    sp = error_spread.forward_spread(x, params, batch_stats, st) if spread is None else spread
    if not sp.err:
        raise ValueError("the backward model needs a forward_spread computed with "
                         "keep_errors=True; this one has dropped its errors")
    cot = bw.cotangents
    out = {}

    # The output ReLU: its input's sign is exact where BatchNorm_1's scale is 0.
    exact2 = np.broadcast_to(p["BatchNorm_1"]["scale"] == 0, st["sum"].shape)
    w_e, w_s = ambiguity(st["sum"], sp.err["sum"].sigma(), sp.err["sum"].sigma_conv(),
                         exact2)
    masks = bw.masks or {"sum": st["sum"] > 0, "bn1": st["bn1"] > 0}
    e_sum = relu_backward(st["sum"], f64(y_bar), _zero(st["sum"].shape), w_e, w_s,
                          masks["sum"])
    bn1 = batch_norm_backward(st["conv2"], sp.err["conv2"], sp.channel["BatchNorm_1"],
                              p["BatchNorm_1"]["scale"], cot["sum"], e_sum)
    out["BatchNorm_1/scale"], out["BatchNorm_1/bias"] = bn1.scale, bn1.beta
    # relu1: its element-wise errors, and BatchNorm_0's channel errors as sources (exact
    # in Conv_1's kernel gradient).
    ra = sp.err["relu1"]
    a_sources = tuple((src.direction, (src.sigma, src.sigma_s)) for src in ra.sources)
    c1, ce1, ch0 = st["conv1"], sp.err["conv1"], sp.channel["BatchNorm_0"]
    scale0 = p["BatchNorm_0"]["scale"]
    e_r, out["Conv_1/kernel"], out["Conv_1/bias"] = conv_backward(
        st["relu1"], ra, a_sources, p["Conv_1"]["kernel"], bn1)
    exact1 = np.broadcast_to(scale0 == 0, st["bn1"].shape)
    w_e, w_s = ambiguity(st["bn1"], sp.err["bn1"].sigma(), sp.err["bn1"].sigma_conv(),
                         exact1)
    e_b1 = relu_backward(st["bn1"], cot["relu1"], e_r, w_e, w_s, masks["bn1"])
    bn0 = batch_norm_backward(c1, ce1, ch0, scale0, cot["bn1"], e_b1)
    out["BatchNorm_0/scale"], out["BatchNorm_0/bias"] = bn0.scale, bn0.beta
    e_x, out["Conv_0/kernel"], out["Conv_0/bias"] = conv_backward(
        f64(x), None, (), p["Conv_0"]["kernel"], bn0)
    out["x"] = GErr(e_sum.v + e_x.v + U * U * np.square(bw.x_bar), e_sum.k + e_x.k,
                    e_sum.m + e_x.m, e_sum.vs + e_x.vs, e_sum.ks + e_x.ks, e_sum.ms + e_x.ms)
    # Every channel-shared error above comes from a channel source (the forward's inputs
    # are exact, so no other error is shared by a channel): where affordable, replace the
    # triangle-inequality k by the sources' exact images (spec/source_images.py).
    if source_images.exact(np.shape(x)):
        own0, own1 = sp.own["BatchNorm_0"], sp.own["BatchNorm_1"]
        zero = np.zeros(np.shape(x)[-1])
        sigmas = {("dm", 0): (own0.mean, own0.mean_s), ("dr", 0): (own0.rel, own0.rel_s),
                  ("da", 0): (sp.local["BatchNorm_0"], zero),
                  ("dm", 1): (own1.mean, own1.mean_s), ("dr", 1): (own1.rel, own1.rel_s)}
        # (BatchNorm_1's output rounding reaches no gradient: the backward never reads bn2)
        for lay, bn in ((0, bn0), (1, bn1)):
            if bn.sources:  # n > 1: the rounded mean(g) and mean(g zhat)
                sigmas[("dg", lay)] = (bn.sources[2].sigma, bn.sources[2].sigma_s)
                sigmas[("dgz", lay)] = (bn.sources[3].sigma, bn.sources[3].sigma_s)
        for t, (k, ks) in source_images.source_k(f64(x), params, st, cot, sigmas,
                                                 masks["bn1"]).items():
            e = out[t]
            shape = np.shape(e.v)
            out[t] = GErr(e.v, np.broadcast_to(k, shape), e.m, e.vs,
                          np.broadcast_to(ks, shape), e.ms)
    return {t: out[t] for t in GRAD_TENSORS}


__all__ = ["GRAD_TENSORS", "FLOOR", "budgets", "model", "raw_errors", "relu_ambiguity"]
