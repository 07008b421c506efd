"""The storage model: a correct port's extra error when it *stores* values in a low type.

The ``fp16`` and ``bf16`` profiles (spec section 8.2) admit a block whose activations,
parameters and statistics are stored in a type with unit roundoff ``u_s`` (float16:
``2^-11``, bfloat16: ``2^-8``) while every sum accumulates in float32, what PyTorch's
autocast and the deployment engines' float16 modes do. Every stored value is rounded
once, a relative error of at most ``u_s``; the accumulation keeps ``u = 2^-24`` and its
terms stay in the fp32 budget (:mod:`resblock.spec.error_model`). To first order the
storage errors add a term linear in ``u_s``, so a bound is::

    bound = budget + u_conv * budget_conv + u_s * budget_store

with ``budget_store = S t`` the sensitivity per unit ``u_s`` derived here (a profile
that stores in the low type also rounds the convolution *inputs* to it: ``u_conv = u_s``,
and their roundings, of ``x``, the kernels and ``relu1``, are the ``budget_conv`` term
already; they are not counted again here).

The terms of ``t``, stage by stage (first order; every quantity float64; ``tiny`` =
float16's smallest normal number ``2^-14`` adds the absolute error ``u_s tiny`` of a
value stored in float16's subnormal range, conservative for bfloat16):

* **Convolution** ``c = a * k + b``: the input's propagated storage errors
  ``t_a * |k|`` (not the input's own rounding: that is ``budget_conv``), the bias
  stored ``|b|``, the output stored ``|c| + tiny``.
* **BatchNorm** of ``c`` (``n = N*H*W`` values per channel, ``inv = |scale| /
  sqrt(var + eps)``, ``zg = |c - mean| inv``): the batch mean stored ``|mean|`` and the
  variance stored ``var`` propagate like the fp32 model's ``d_mean`` and ``d_var``;
  ``t_c`` like ``e_c``; the local roundings of either evaluation form: ``inv`` (or the
  rsqrt) stored, ``scale`` stored and the centred value stored, ``3 zg + 2 tiny inv``;
  the folded form's scaled kernel ``scale inv`` applied to ``c``, ``|c| inv``, its shift's
  product ``mean inv`` stored, ``|mean inv| + tiny``, and the shift ``beta - mean inv``
  stored, ``|mean| inv + |beta|``; ``beta`` stored, ``|beta| + tiny``; the output stored,
  ``|z| + tiny``. Epsilon is assumed added in float32 (float16 holds
  ``1e-5`` only as a subnormal, to 1.4e-3 of itself).
* **ReLU** passes ``t`` on; ``relu1``'s own rounding is ``bn1``'s, a convolution input.
* **Sum** ``bn2 + x``: ``x`` stored, ``|x|``; the sum stored, ``|sum| + tiny``.
* **Running statistics** ``M old + (1 - M) batch`` in either form: ``(1 - M)`` times the
  batch statistic's storage error, the old value stored, ``M`` and ``1 - M`` stored,
  the products and the result stored: ``2 |old| + 3 (1 - M)(|batch| + |old|) + |new|``
  (for the variance, the ``(n - 1)/n`` conversion's rounding too).

Range: float16's largest finite value is 65504; a value beyond it overflows to ``inf``,
which scores ``inf``. The bounds here assume every stored value is inside the type's
range and widen nothing for overflow; a case where a conforming port's stored value may
overflow is outside the profile instead (spec 8.6, :mod:`resblock.spec.store_range`):
``resblock check`` skips it rather than judging it (on the committed set the two
``stress-large`` cases, whose batch variances reach about 1e6).

The aggregate test's spread gets the same term in quadrature (``sigma_store``, per unit
``u_s``): element-wise roundings as variances (``|v|^2``, three times the variance of a
rounding to nearest), the channel-shared ones (the stored statistics and parameters) as
one standard deviation per channel, and what BatchNorm_0's channel errors do after the
second convolution bounded by Cauchy-Schwarz over the nine taps (``sqrt(9 (k^2 * w^2))``)
and taken as coherent by BatchNorm_1's statistics: an over-estimate, so the aggregate
test of the low-precision profiles is the looser one (DESIGN section 5.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec.constants import EPSILON, MOMENTUM, STAT_NAMES
from resblock.spec.error_model import SAFETY, TENSORS, abs_conv

# float16's smallest normal number: a value below it is stored with the absolute error
# u_s * TINY at most (float16's subnormal spacing is 2^-24 = 2 * 2^-11 * 2^-14).
TINY = 2.0 ** -14
_AXES = (0, 1, 2)
SPREAD_TENSORS = ("output",) + STAT_NAMES


@dataclass(frozen=True)
class StoreModel:
    """Sensitivities per unit ``u_s`` of one case: ``budget[name]`` (``S t``, every name
    of :data:`resblock.spec.error_model.TENSORS`) and ``sigma[name]`` (the spread, the
    output and the four running statistics), float32 rounded up."""

    budget: dict
    sigma: dict


def own(a):
    """A stored value's own rounding per unit ``u_s``: ``|a| + tiny``."""
    return np.abs(a) + TINY


def conv_store(a_t, kernel, bias, c):
    """``t`` of a convolution's output: the input's propagated storage errors through
    ``|k|`` (``a_t`` None: none), the bias and the output stored (both modes)."""
    t = np.asarray(own(c), np.float64)
    t += np.abs(bias)
    if a_t is not None:
        t += abs_conv(a_t, np.abs(kernel))  # float32, widened as ``t + a`` widens it
    return t


def conv_spread(v_a, k2_a, kernel, bias, c):
    """``(v, k)`` of a convolution's output (both modes): the element-wise variance (the
    input's ``v_a`` through ``k^2``, the output stored) and the channel-coherent standard
    deviation (the input's coherent variances ``k2_a`` bounded by Cauchy-Schwarz over the
    nine taps, ``sqrt(9 (k^2 * k2_a))``, and the bias stored, ``|b|``)."""
    w2 = np.square(np.asarray(kernel, np.float64))
    v = abs_conv(v_a, w2).astype(np.float64) + np.square(own(c))
    k = np.sqrt(9.0 * abs_conv(k2_a, w2).astype(np.float64)) + np.abs(bias)
    return v, k


def _bn_stats(c, scale):
    n = c.shape[0] * c.shape[1] * c.shape[2]
    mean = c.mean(axis=_AXES)
    dev = np.abs(c - mean)
    var = np.square(dev).mean(axis=_AXES)
    sig2 = var + EPSILON
    inv = np.abs(scale) / np.sqrt(sig2)
    return n, mean, dev, var, sig2, inv


def _running(t_batch, batch, old, new):
    m = MOMENTUM
    return ((1.0 - m) * t_batch + 2.0 * own(old)
            + 3.0 * (1.0 - m) * (own(batch) + own(old)) + own(new))


def _batch_norm(c, t_c, scale, beta, mean_in, var_in):
    """``(t_z without the output's own rounding, t_mean, t_var)``. In place into one
    float64 tensor and one scratch tensor (the same operations in the same order as the
    whole expressions: the same bits, 200 MB less alive at 32x56x56x64)."""
    n, mean, dev, var, sig2, inv = _bn_stats(c, scale)
    t_mean = t_c.mean(axis=_AXES) + own(mean)
    t_var = 2.0 * (dev * t_c).mean(axis=_AXES) + own(var)
    zg = np.multiply(dev, inv, out=dev)  # dev is not needed after this
    # prop = inv * (t_c (1 - 2/n) + t_mean) + zg * (t_var / (2 sig2))
    prop = t_c * (1.0 - 2.0 / n)
    prop += t_mean
    prop *= inv
    scratch = np.multiply(zg, t_var / (2.0 * sig2))
    prop += scratch
    # inv, scale and the centred value stored (3 zg, with tiny for each), the folded
    # form's scaled kernel and shift, beta stored.
    local = np.multiply(zg, 3.0, out=zg)
    local += 2.0 * TINY * inv
    np.abs(c, out=scratch)
    scratch *= inv
    local += scratch
    del scratch
    local += np.abs(mean) * inv
    local += own(mean * inv)
    local += own(beta)
    local += np.abs(beta)
    prop += local
    m = MOMENTUM
    new_mean = m * mean_in + (1.0 - m) * mean
    new_var = m * var_in + (1.0 - m) * var
    r_mean = _running(t_mean, mean, mean_in, new_mean)
    r_var = _running(t_var + own(var), var, var_in, new_var)
    return prop, r_mean, r_var


def _plus_own(a, z):
    """``a + own(z)`` into a new tensor."""
    out = np.abs(z)
    out += TINY
    return np.add(a, out, out=out)


def raw_budgets(x, params, batch_stats, stages: dict, names=TENSORS) -> dict:
    """The unscaled storage sensitivities ``t`` (float64) over ``names`` (default: every
    name of TENSORS); a stage not in ``names`` is dropped as soon as the next one has
    used it (the same values either way)."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    t = {}
    c1 = conv_store(None, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], stages["conv1"])
    prop1, t["BatchNorm_0/mean"], t["BatchNorm_0/var"] = _batch_norm(
        stages["conv1"], c1, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"],
        st["BatchNorm_0"]["mean"], st["BatchNorm_0"]["var"])
    if "conv1" in names:
        t["conv1"] = c1
    del c1
    if "bn1" in names or "relu1" in names:
        t["bn1"] = t["relu1"] = _plus_own(prop1, stages["bn1"])
    c2 = conv_store(prop1, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], stages["conv2"])
    del prop1
    prop2, t["BatchNorm_1/mean"], t["BatchNorm_1/var"] = _batch_norm(
        stages["conv2"], c2, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"],
        st["BatchNorm_1"]["mean"], st["BatchNorm_1"]["var"])
    if "conv2" in names:
        t["conv2"] = c2
    del c2
    bn2 = _plus_own(prop2, stages["bn2"])
    del prop2
    if "bn2" in names:
        t["bn2"] = bn2.copy()
    # sum = bn2 + |x| + own(sum), in bn2's tensor
    bn2 += np.abs(f64(x))
    t["sum"] = t["output"] = np.add(bn2, own(stages["sum"]), out=bn2)
    return {k: t[k] for k in names}


def _spread_bn(c, v_c, k_c, scale, beta, z, mean_in, var_in):
    """Spread of a BatchNorm under storage roundings: ``(v_z, k_mean, k_rel, zg, s_mean,
    s_var)``: the element-wise variance of ``z``, the channel-shared standard deviation
    of its offset (direction 1) and of ``inv`` (relative, direction ``z - beta``, whose
    size is ``zg``), and the running statistics' standard deviations (per unit ``u_s``).
    ``k_c`` None: no channel-shared errors in ``c`` (exactly what zeros give, without
    their work). The element-wise tensors are built in place, in the order of the whole
    expressions (the same bits with three float64 temporaries fewer)."""
    n, mean, dev, var, sig2, inv = _bn_stats(c, scale)
    d_mean = np.sqrt(v_c.mean(axis=_AXES) / n)
    d_var = 2.0 * np.sqrt((dev * dev * v_c).mean(axis=_AXES) / n)
    if k_c is not None:
        d_mean = d_mean + k_c.mean(axis=_AXES)
        d_var = d_var + 2.0 * (dev * k_c).mean(axis=_AXES)
    d_mean = np.hypot(d_mean, own(mean))
    d_var = np.hypot(d_var, own(var))
    zg = np.multiply(dev, inv, out=dev)
    # Coherent channel errors of c that vary by position (BatchNorm_0's, after conv2) do
    # not cancel in c - mean: they stay in the element's variance.
    # v_z = inv^2 (v_c + k_c^2) + own(z)^2 + (c inv)^2 + zg^2
    if k_c is None:
        v_z = np.multiply(inv * inv, v_c)
    else:
        v_z = np.square(k_c)
        v_z += v_c  # v_c + k_c^2, commuted: the same sum
        v_z *= inv * inv
    scratch = np.square(own(z))
    v_z += scratch
    np.multiply(c, inv, out=scratch)
    v_z += np.square(scratch, out=scratch)
    v_z += np.square(zg, out=scratch)
    del scratch
    k_mean = np.sqrt(np.square(inv * d_mean) + np.square(own(mean * inv))
                     + 2.0 * np.square(own(beta)))
    k_rel = np.sqrt(np.square(d_var / (2.0 * sig2)) + 2.0) + TINY / np.maximum(inv, TINY)
    m = MOMENTUM
    new_mean = m * mean_in + (1.0 - m) * mean
    new_var = m * var_in + (1.0 - m) * var
    s_mean = np.sqrt(((1.0 - m) * d_mean) ** 2 + 2.0 * own(mean_in) ** 2
                     + 3.0 * ((1.0 - m) * (own(mean) + own(mean_in))) ** 2
                     + own(new_mean) ** 2)
    s_var = np.sqrt(((1.0 - m) * np.hypot(d_var, own(var))) ** 2 + 2.0 * own(var_in) ** 2
                    + 3.0 * ((1.0 - m) * (own(var) + own(var_in))) ** 2
                    + own(new_var) ** 2)
    return v_z, k_mean, k_rel, zg, s_mean, s_var


def _channel_part(k_mean, k_rel, zg):
    """``k_mean^2 + (k_rel zg)^2`` in ``zg``'s tensor (the channel-shared variance of a
    BatchNorm's output)."""
    zg *= k_rel
    np.square(zg, out=zg)
    zg += np.square(k_mean)  # commuted: the same sum
    return zg


def raw_spread(x, params, batch_stats, stages: dict) -> dict:
    """The unscaled storage spreads (float64) of the output and the running statistics."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    out = {}
    c1 = stages["conv1"]
    v1 = np.square(own(c1))
    v_z, k_mean, k_rel, zg, out["BatchNorm_0/mean"], out["BatchNorm_0/var"] = _spread_bn(
        c1, v1, None, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"],
        stages["bn1"], st["BatchNorm_0"]["mean"], st["BatchNorm_0"]["var"])
    del v1
    # The conv bias's rounding shifts a whole channel: it cancels in c - mean and moves
    # only the running mean.
    out["BatchNorm_0/mean"] = np.hypot(out["BatchNorm_0/mean"],
                                       (1.0 - MOMENTUM) * np.abs(p["Conv_0"]["bias"]))
    closed = ~(stages["relu1"] > 0)
    # bn1's own rounding is conv2's input rounding (budget_conv's term), not counted here;
    # the convolution takes its inputs in float32 (abs_conv): narrowed at once.
    v_z -= np.square(own(stages["bn1"]))
    v_z[closed] = 0.0
    v_r = v_z.astype(np.float32)
    del v_z
    k_r2 = _channel_part(k_mean, k_rel, zg)
    k_r2[closed] = 0.0
    k_r2 = k_r2.astype(np.float32)
    del zg, closed
    c2 = stages["conv2"]
    v2, k2 = conv_spread(v_r, k_r2, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], c2)
    del v_r, k_r2
    v_z2, k_mean2, k_rel2, zg2, out["BatchNorm_1/mean"], out["BatchNorm_1/var"] = _spread_bn(
        c2, v2, k2, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"], stages["bn2"],
        st["BatchNorm_1"]["mean"], st["BatchNorm_1"]["var"])
    del v2, k2
    # output = sqrt(v_z2 + x^2 + own(sum)^2 + k_mean2^2 + (k_rel2 zg2)^2)
    scratch = np.square(f64(x))
    v_z2 += scratch
    v_z2 += np.square(own(stages["sum"]), out=scratch)
    del scratch
    v_z2 += np.square(k_mean2)
    zg2 *= k_rel2
    v_z2 += np.square(zg2, out=zg2)
    del zg2
    out["output"] = np.sqrt(v_z2, out=v_z2)
    return out


def stored(a, factor: float) -> np.ndarray:
    """``a * factor`` as float32, rounded up (how budgets and spreads are stored)."""
    return (np.asarray(a, np.float64) * (factor * (1.0 + 2.0 ** -18))).astype(np.float32)


@blas.single_threaded
def model(x, params, batch_stats, stages: dict, names=TENSORS) -> StoreModel:
    """Stored storage budgets (``S t``, of ``names``: default every name of TENSORS; the
    same values either way) and spreads of a case, float32 rounded up."""
    t = raw_budgets(x, params, batch_stats, stages, names)
    budget = {}
    for k in names:  # each float64 tensor dropped once stored
        budget[k] = stored(t.pop(k), SAFETY)
    del t
    sg = raw_spread(x, params, batch_stats, stages)
    return StoreModel(budget=budget, sigma={k: stored(sg[k], 1.0) for k in SPREAD_TENSORS})


__all__ = ["StoreModel", "conv_spread", "conv_store", "model", "own", "raw_budgets",
           "raw_spread", "stored", "SPREAD_TENSORS", "TINY"]
