"""The float32 error model of the backward pass: per-element budgets of every gradient.

The same model as :mod:`resblock.spec.error_model` (first order in ``u = 2^-24``, sums of
``n`` terms err by ``g(n) u sum|terms|`` with ``g(n) = sqrt(n)``, one safety factor
``S``, a sensitivity ``s`` per unit ``u_conv`` for reduced-precision convolutions),
propagated backward through the VJP of spec section 10, stage by stage, from the exact
cotangent ``y_bar``. Every budget combines three sources:

* **the forward's errors**: a port's backward runs on its own float32 forward, so the
  conv outputs (``e_c`` of the forward model) move the normalised values ``zhat`` and
  ``inv = 1/sqrt(var + eps)`` that BatchNorm's backward multiplies by, and ``relu1``
  (``e_relu1``) enters the weight gradient of ``Conv_1``;
* **the ReLU masks**: where a pre-activation's oracle value lies within its forward bound
  (``|p| <= S (e + u_conv s)``) a correct port may see either sign, so its cotangent
  there may be 0 or the full incoming cotangent: that element errs by up to ``|g|``
  (counted per profile: the ``fp32`` ambiguity in ``e``, the extra elements of ``tf32``
  and ``bf16`` in ``s``; a hard bound, so the safety factor does not multiply it).
  An input that is exactly 0 in the oracle (a channel of equal values, BatchNorm bias
  0) is ambiguous too: Flax's float32 BatchNorm gives exactly 0 there, PyTorch's CPU
  ``F.batch_norm`` gives about 1e-7 (measured, torch 2.13), both within the forward
  bound, so the ReLU convention at 0 cannot be told from rounding (spec 10.2);
* **the backward's own rounding**: the transposed convolutions (``9F`` terms), the weight
  gradients (``N*H*W`` terms per tap), the bias and BatchNorm reductions (``n`` terms),
  and the few products of BatchNorm's input gradient.

BatchNorm's input gradient ``c_bar = scale inv (g - mean(g) - zhat mean(g zhat))`` errs
by ``|scale| inv ((1 - 2/n) e_g + mean(e_g) + |zhat| mean(e_g |zhat|) + e_zhat |mean(g
zhat)| + |zhat| mean(|g| e_zhat)) + |scale A| inv e_inv`` plus its rounding, with ``A`` the
bracket, ``e_zhat`` and the relative error ``e_inv`` of ``inv`` from the forward model;
it is exactly 0 at ``n = 1`` (``c - mean`` and ``g - mean(g)`` are exactly 0), and so is
the model. The conv-bias gradients are exactly 0 in exact arithmetic (``sum(c_bar) = 0``):
their budget ``sum(e_cbar) + u g(n) sum|c_bar|`` bounds pure rounding noise, never a
share of the (zero) value.
"""

from __future__ import annotations

import numpy as np

from resblock.spec import error_model
from resblock.spec.constants import EPSILON, PARAM_NAMES, load
from resblock.spec.error_model import FLOOR, ROUNDING_STD, SAFETY, U, g

GRAD_TENSORS = ("x",) + PARAM_NAMES
_PROFILES = load()["tolerance"]["profiles"]
U_TF32 = _PROFILES["tf32"]["conv_unit_roundoff"]
U_BF16 = _PROFILES["bf16"]["conv_unit_roundoff"]
_AXES = (0, 1, 2)


def _mean(a):
    return np.asarray(a, np.float64).mean(axis=_AXES)


def _sum(a):
    return np.asarray(a, np.float64).sum(axis=_AXES)


def relu_ambiguity(pre, e_pre, s_pre, exact=None):
    """Per-element weights ``(w_e, w_s)`` of a ReLU mask that a correct port may flip:
    ``w_e`` 1 where ``|pre| <= S e`` (fp32); ``w_s`` the extra elements of the tf32 and
    bf16 profiles per unit ``u_conv``. ``exact``: elements whose sign is exact in
    float32 (never ambiguous)."""
    a = np.abs(pre)
    amb = [a <= SAFETY * (e_pre + u * s_pre) for u in (0.0, U_TF32, U_BF16)]
    if exact is not None:
        amb = [m & ~exact for m in amb]
    # A flipped mask errs by at most |g| for certain, not probably: divided by S here so
    # that the stored budget (S times the propagated error) carries it exactly once.
    w_e = amb[0] / SAFETY
    w_s = ((amb[1] & ~amb[0]) / U_TF32 + (amb[2] & ~amb[1]) / U_BF16) / SAFETY
    return w_e, w_s


def relu_backward(pre, g_out, e_g, s_g, w_e, w_s):
    """Budgets of ``g_out * (pre > 0)``: the incoming error where the mask is (or may
    be) open, and ``|g_out|`` where it may flip."""
    open_ = ((pre > 0) | (w_e > 0) | (w_s > 0)).astype(np.float64)
    ag = np.abs(g_out)
    return e_g * open_ + w_e * ag, s_g * open_ + w_s * ag


def _moment_errors(c, n):
    """The forward model's rounding errors of a channel's float32 mean and variance."""
    if n == 1:
        z = np.zeros(c.shape[-1])
        return z, z
    mean = _mean(c)
    var = _mean(np.square(c - mean))
    gn = g(n)
    abs_mean = _mean(np.abs(c))
    d_mean = U * (gn * abs_mean + np.abs(mean))
    d_var = U * ((gn + 1.0) * (var + mean * mean)
                 + 2.0 * np.abs(mean) * (gn * abs_mean + np.abs(mean))
                 + mean * mean + var) + error_model.D_EPSILON
    return d_mean, d_var


def batch_norm_backward(c, e_c, s_c, scale, gbar, e_g, s_g):
    """Budgets ``(e, s)`` of ``c_bar``, ``scale_bar`` and ``beta_bar``."""
    n = c.shape[0] * c.shape[1] * c.shape[2]
    mean = _mean(c)
    dev = c - mean
    var = _mean(np.square(dev))
    sig2 = var + EPSILON
    inv = 1.0 / np.sqrt(sig2)
    zhat = dev * inv
    az = np.abs(zhat)
    d_mean, d_var = _moment_errors(c, n)
    c1 = 1.0 - 2.0 / n
    rel_e = (d_var + 2.0 * _mean(np.abs(dev) * e_c)) / (2.0 * sig2) + 3.0 * U
    rel_s = 2.0 * _mean(np.abs(dev) * s_c) / (2.0 * sig2)
    ez = inv * (c1 * e_c + _mean(e_c) + d_mean) + az * rel_e + 2.0 * U * az
    sz = inv * (c1 * s_c + _mean(s_c)) + az * rel_s
    mg = _mean(gbar)
    mgz = _mean(gbar * zhat)
    bracket = gbar - mg - zhat * mgz
    gi = np.abs(scale) * inv
    ag = np.abs(gbar)

    def prop(eg, ezz, rel):
        cb = gi * (c1 * eg + _mean(eg) + az * _mean(eg * az) + ezz * np.abs(mgz)
                   + az * _mean(ag * ezz)) + gi * np.abs(bracket) * rel
        return cb, _sum(eg * az) + _sum(ag * ezz), _sum(eg)

    e_cb, e_sb, e_bb = prop(e_g, ez, rel_e)
    gn = g(n)
    e_cb = e_cb + U * gi * (gn * _mean(ag) + az * (gn + 1.0) * _mean(np.abs(gbar * zhat))
                            + np.abs(gbar - mg) + 2.0 * az * np.abs(mgz)
                            + 4.0 * np.abs(bracket))
    e_sb = e_sb + U * (gn + 1.0) * _sum(np.abs(gbar * zhat))
    e_bb = e_bb + U * gn * _sum(ag)
    s_cb, s_sb, s_bb = prop(s_g, sz, rel_s)
    return (e_cb, s_cb), (e_sb, s_sb), (e_bb, s_bb)


def conv_backward(a, e_a, s_a, kernel, cbar, e_cb, s_cb):
    """Budgets of ``a_bar``, ``k_bar`` and ``b_bar`` of ``c = conv3x3(a, k) + b``.

    ``e_a``/``s_a`` None: an exact input (``x``)."""
    from resblock.spec.backward import conv3x3_input_grad, conv3x3_kernel_grad

    n = a.shape[0] * a.shape[1] * a.shape[2]
    f = cbar.shape[-1]
    ak = np.abs(kernel)
    acb = np.abs(cbar)
    aa = np.abs(a)
    e_in = conv3x3_input_grad(e_cb + U * g(9 * f) * acb, ak)
    s_in = conv3x3_input_grad(s_cb, ak) + ROUNDING_STD * np.sqrt(
        conv3x3_input_grad(cbar * cbar, kernel * kernel))
    e_k = conv3x3_kernel_grad(aa, e_cb + U * g(n) * acb)
    s_k = conv3x3_kernel_grad(aa, s_cb) + ROUNDING_STD * np.sqrt(
        conv3x3_kernel_grad(a * a, cbar * cbar))
    if e_a is not None:
        e_k = e_k + conv3x3_kernel_grad(e_a, acb)
        s_k = s_k + conv3x3_kernel_grad(s_a, acb)
    e_b = _sum(e_cb) + U * g(n) * _sum(acb)
    s_b = _sum(s_cb)
    return (e_in, s_in), (e_k, s_k), (e_b, s_b)


def raw_budgets(x, params, batch_stats, y_bar, bw) -> tuple[dict, dict]:
    """The unscaled backward model: ``(e, s)`` dicts over :data:`GRAD_TENSORS`.

    ``bw``: the oracle's :class:`resblock.spec.backward.BackwardResult` of the case."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = bw.forward.stages
    fe, fs = error_model.raw_budgets(x, params, batch_stats, st)
    fe = {k: f64(v) for k, v in fe.items()}
    fs = {k: f64(v) for k, v in fs.items()}
    cot = bw.cotangents
    yb = f64(y_bar)
    e, s = {}, {}

    w_e, w_s = relu_ambiguity(st["sum"], fe["sum"], fs["sum"])
    e_sum, s_sum = relu_backward(st["sum"], yb, 0.0, 0.0, w_e, w_s)
    (e_c2, s_c2), (e["BatchNorm_1/scale"], s["BatchNorm_1/scale"]), \
        (e["BatchNorm_1/bias"], s["BatchNorm_1/bias"]) = batch_norm_backward(
            st["conv2"], fe["conv2"], fs["conv2"], p["BatchNorm_1"]["scale"], cot["sum"],
            e_sum, s_sum)
    (e_r, s_r), (e["Conv_1/kernel"], s["Conv_1/kernel"]), \
        (e["Conv_1/bias"], s["Conv_1/bias"]) = conv_backward(
            st["relu1"], fe["relu1"], fs["relu1"], p["Conv_1"]["kernel"], cot["conv2"],
            e_c2, s_c2)
    w_e, w_s = relu_ambiguity(st["bn1"], fe["bn1"], fs["bn1"])
    e_b1, s_b1 = relu_backward(st["bn1"], cot["relu1"], e_r, s_r, w_e, w_s)
    (e_c1, s_c1), (e["BatchNorm_0/scale"], s["BatchNorm_0/scale"]), \
        (e["BatchNorm_0/bias"], s["BatchNorm_0/bias"]) = batch_norm_backward(
            st["conv1"], fe["conv1"], fs["conv1"], p["BatchNorm_0"]["scale"], cot["bn1"],
            e_b1, s_b1)
    (e_x, s_x), (e["Conv_0/kernel"], s["Conv_0/kernel"]), \
        (e["Conv_0/bias"], s["Conv_0/bias"]) = conv_backward(
            f64(x), None, None, p["Conv_0"]["kernel"], cot["conv1"], e_c1, s_c1)
    e["x"] = e_sum + e_x + U * np.abs(bw.x_bar)
    s["x"] = s_sum + s_x
    return e, s


def budgets(x, params, batch_stats, y_bar, bw) -> error_model.Budgets:
    """Stored backward budgets: ``S e`` and ``S s`` as float32, rounded up."""
    e, s = raw_budgets(x, params, batch_stats, y_bar, bw)
    up = 1.0 + 2.0 ** -18

    def f32(a):
        return (np.asarray(a, np.float64) * (SAFETY * up)).astype(np.float32)

    return error_model.Budgets(fp32={k: f32(v) for k, v in e.items()},
                               conv={k: f32(v) for k, v in s.items()})


__all__ = ["GRAD_TENSORS", "FLOOR", "budgets", "raw_budgets", "relu_ambiguity"]
