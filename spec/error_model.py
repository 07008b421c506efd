"""The float32 error model: a per-element bound on a correct float32 port's error.

The tolerance of the conformance rule (spec section 8) is not a fixed rtol/atol pair but
a *budget* per element of every checked tensor, derived here from a stated model of
float32 evaluation and evaluated next to the float64 oracle, in the spirit of TOSA's
dot-product compliance mode (a bound per output from ``sum |a||b|`` of the products that
made it) and of probabilistic rounding-error analysis (Higham and Mary, 2019: a sum of
``n`` terms in floating point errs by about ``lambda * sqrt(n) * u * sum|terms|``, with
``lambda`` a small constant whose failure probability falls like ``exp(-lambda^2/2)``).

The model, stage by stage (first order in ``u = 2^-24``; every quantity is float64;
``g(n) = sqrt(n)``, ``g(1) = 0`` for a reduction that adds nothing):

* **Convolution** ``c = b + sum_k a_k w_k`` over ``K = 9C`` products. Rounding of the
  dot product and the bias: ``u g(K+1) (|a| * |w| + |b|)``, where ``|a| * |w|`` is the
  3x3 convolution of absolute values (TOSA's ``bnd``). An error ``e_a`` already in the
  input propagates as ``e_a * |w|``. Both are one convolution: ``(e_a + u g(K+1)|a|) * |w|``.
  Reduced-precision convolutions (TF32, bf16) round both operands of every product to
  ``u_conv``: a relative error ``d_a + d_w`` per product, the two roundings independent
  and uniform on ``[-u_conv, u_conv]`` (standard deviation ``sqrt(2/3) u_conv``); they add
  up like a random walk (the probabilistic argument of the sums, with the same ``S``):
  sensitivity ``s_c = s_a * |w| + sqrt(2/3) sqrt(a^2 * w^2)`` per unit ``u_conv``. A bias
  of the rounding (truncation instead of round-to-nearest) scales every product alike and
  is divided out again by the BatchNorm that follows.
  A transform-domain convolution (Winograd, FFT) forms its outputs by cancellation from
  products of transformed tiles and transformed kernels, which carry every tap: its
  rounding is modelled as ``u K_T tile_rms`` (:func:`tile_square`), and the output's own
  rounding is the larger of the two families' terms (spec 7.0; a port uses one).
* **Batch statistics** over the ``n = N*H*W`` values of a channel, in float32, single
  pass (the spec's formula; two-pass, Welford and pairwise forms err less):
  ``d_mean = u (g(n) mean|c| + |mean|)`` and
  ``d_var = u ((g(n)+1) mean(c^2) + 2|mean| (g(n) mean|c| + |mean|) + mean^2 + var)``:
  the cancellation in ``E[c^2] - E[c]^2`` that the old rule's ``kappa`` stood for, now per
  channel. With ``n = 1`` both are exactly 0 (the mean of one value is that value; every
  variance formula gives exactly 0). Errors already in ``c`` move the mean by at most
  ``mean(e_c)`` and the variance by at most ``2 mean(|c - mean| e_c)``.
* **Normalisation** ``z = (c - mean) * inv + beta``, ``inv = scale / sqrt(var + eps)``:
  ``|inv| ((1 - 2/n) e_c + mean(e_c) + d_mean)`` from the centred input (exactly 0 at
  ``n = 1``), ``|scale zhat| (d_var_total / (2 (var + eps)) + 3u)`` through ``inv``, and
  the rounding of evaluating it in either float32 form, subtract-first or folded
  (``c * inv + (beta - mean * inv)``, what Keras, ONNX Runtime and PyTorch compute):
  ``u (2|scale zhat| + |c inv| + 2|mean inv| + |beta| + 2|z|)``. The folded form's
  ``|mean inv|`` term is why a 1x1 batch-1 case (``inv`` up to ``1/sqrt(eps)``) needs a
  bound although its variance is exactly 0.
* **ReLU** passes the bound through (1-Lipschitz); the **residual add** adds ``u|sum|``.
* **Running statistics** ``new = m old + (1 - m) batch``: ``(1 - m)`` times the batch
  statistic's error, the rounding of the update in either form (``m old + (1-m) b`` or
  ``old + (1-m)(b - old)``), the float32 representation of ``m`` and ``1 - m``
  (``1 - float32(0.99)`` is ``0.01 (1 - 9.5e-7)``), and for the variance the
  ``(n-1)/n`` conversion a PyTorch port applies.

The bound of an element is ``S (e + u_conv s)`` with one safety factor ``S``
(:data:`SAFETY`, justified in spec section 8 by the zoo of correct algorithms of
:mod:`resblock.conformance.mistakes.zoo`), floored at float32's smallest normal number. The
golden file stores ``S e`` as ``budget/<tensor>`` and ``S s`` as ``budget_conv/<tensor>``
(float32, rounded up), so a checker in any language computes
``bound = budget + u_conv * budget_conv`` and ``score = |got - ref| / bound``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec.constants import EPSILON, MOMENTUM, STAT_NAMES, load

U = 2.0 ** -24
SAFETY: float = load()["tolerance"]["safety_factor"]
FLOOR = float(np.finfo(np.float32).tiny)
# float32 representations of the constants a port uses: |float32(c) - c|.
D_MOMENTUM = abs(float(np.float32(MOMENTUM)) - MOMENTUM)
D_ONE_MINUS_MOMENTUM = max(abs(1.0 - float(np.float32(MOMENTUM)) - (1.0 - MOMENTUM)),
                           abs(float(np.float32(1.0 - MOMENTUM)) - (1.0 - MOMENTUM)))
D_EPSILON = abs(float(np.float32(EPSILON)) - EPSILON)

ROUNDING_STD = float(np.sqrt(2.0 / 3.0))  # std of d_a + d_w per unit u_conv
# The transform-rounding term of a convolution (spec 8.3): ``u K_T tile_rms``, budget and
# spread constants (constants.json, tolerance.transform).
_TRANSFORM = load()["tolerance"]["transform"]
TRANSFORM_BUDGET: float = _TRANSFORM["budget"]
TRANSFORM_SPREAD: float = _TRANSFORM["spread"]
STAGE_TENSORS = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum")
TENSORS = ("output",) + STAGE_TENSORS + STAT_NAMES


@dataclass(frozen=True)
class Budgets:
    """Per-element budgets of one case: ``fp32[name]`` (``S e``) and ``conv[name]``
    (``S s``, per unit ``u_conv``) for every name of :data:`TENSORS`."""

    fp32: dict
    conv: dict

    def bound(self, name: str, u_conv: float = 0.0) -> np.ndarray:
        return bound_from(self.fp32[name], self.conv[name], u_conv)


def bound_from(budget, budget_conv, u_conv: float, budget_store=None,
               u_store: float = 0.0) -> np.ndarray:
    """The bound a checker applies: ``budget + u_conv * budget_conv + u_store *
    budget_store`` (the last term: :mod:`resblock.spec.error_store`), floored."""
    b = np.asarray(budget, np.float64) + u_conv * np.asarray(budget_conv, np.float64)
    if u_store:
        b = b + u_store * np.asarray(budget_store, np.float64)
    return np.maximum(b, FLOOR)


def g(n: int) -> float:
    """Accumulation factor of a float32 sum of ``n`` terms (``sqrt(n)``, 0 for one term)."""
    return float(np.sqrt(n)) if n > 1 else 0.0


# Positions per block of the blockwise loops (here and in error_spread): a block stays in
# cache, and a tensor of up to this many values per channel is one block.
BLOCK_ROWS = 4096


def sample_blocks(n: int, h: int, w: int):
    """Slices of the batch axis holding about :data:`BLOCK_ROWS` positions each (whole
    samples; one block when ``n * h * w <= BLOCK_ROWS``)."""
    step = max(1, BLOCK_ROWS // max(h * w, 1))
    return [slice(b, min(b + step, n)) for b in range(0, n, step)]


def cores() -> int:
    """The cores this process may run on (its affinity where the OS reports it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def for_blocks(fn, blocks) -> None:
    """``fn(block)`` for every block, on as many threads as this process has cores
    (NumPy's products and ufuncs release the GIL). Each block writes its own part of the
    result with the same operations as in one thread: the same bits in any order."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(cores(), len(blocks))
    if workers <= 1:
        for b in blocks:
            fn(b)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, blocks):  # re-raises the first failure
            pass


def pad_hw(a, axes=(-3, -2)) -> np.ndarray:
    """``a`` with one zero on each side of the two spatial ``axes``: the SAME padding of a
    3x3 convolution, ``np.pad``'s values without its overhead (20 us a call against 1,
    18% of a 1x8x8x4 case's models)."""
    a = np.asarray(a)
    shape, inner = list(a.shape), [slice(None)] * a.ndim
    for ax in axes:
        shape[ax] += 2
        inner[ax] = slice(1, -1)
    out = np.zeros(shape, a.dtype)
    out[tuple(inner)] = a
    return out


def abs_conv(a: np.ndarray, kernel_abs: np.ndarray) -> np.ndarray:
    """``|a| * |w|``-style 3x3 SAME convolution of non-negative arrays, in float32 BLAS.

    The whole model is evaluated in float32 where it only adds non-negative terms (its
    relative error, a few 1e-7, is far inside ``S``; budgets are rounded up when
    stored), and in float64 where it subtracts (``c - mean``). ``a`` may carry extra
    leading axes (several error vectors at once). Evaluated a block of samples at a
    time (:func:`sample_blocks`): the same products and sums element by element, 3x
    faster at 32x56x56x64 than over the whole tensor (measured)."""
    a = np.asarray(a, np.float32)
    k = np.asarray(kernel_abs, np.float32)
    *lead, h, w, c = a.shape
    a = a.reshape(-1, h, w, c)
    out = np.empty((a.shape[0], h, w, k.shape[-1]), np.float32)

    def block(blk):
        ap = pad_hw(a[blk])
        o = out[blk]
        o[...] = 0.0
        for i in range(3):
            for j in range(3):
                o += ap[:, i:i + h, j:j + w, :] @ k[i, j]

    for_blocks(block, sample_blocks(a.shape[0], h, w))
    return out.reshape(*lead, h, w, k.shape[-1])


def tile_square(a2, kernel2) -> np.ndarray:
    """``tile_rms^2`` of a 3x3 SAME convolution's outputs (spec 8.3): for every output,
    the sum over input channels of (the squares ``a2`` of the inputs in its 3x3 window,
    summed) times (the squares ``kernel2`` of all nine taps of that channel, summed),
    float32 (non-negative sums). It is the sum of ``(a_p w_t)^2`` over every pairing of
    a window input ``p`` with a tap ``t``: the products a transform-domain convolution
    (Winograd, FFT) mixes into an output, where a direct sum forms only the nine pairs
    ``t = p``. ``kernel2`` is HWIO. Blocked like :func:`abs_conv`."""
    a2 = np.asarray(a2, np.float32)
    taps = np.asarray(kernel2, np.float32).sum(axis=(0, 1), dtype=np.float32)  # (C, F)
    n, h, w, c = a2.shape
    out = np.empty((n, h, w, taps.shape[-1]), np.float32)

    def block(blk):
        ap = pad_hw(a2[blk])
        rows = ap[:, 0:h, :, :] + ap[:, 1:h + 1, :, :]  # separable: rows, then columns
        rows += ap[:, 2:h + 2, :, :]
        win = rows[:, :, 0:w, :] + rows[:, :, 1:w + 1, :]
        win += rows[:, :, 2:w + 2, :]
        out[blk] = win @ taps

    for_blocks(block, sample_blocks(n, h, w))
    return out


def transform_budget(a2, kernel2) -> np.ndarray:
    """``u K_T tile_rms``: the rounding of a transform-domain convolution (spec 8.3),
    float32; the budget's convolution rounding is the larger of it and the direct sum's."""
    t = np.sqrt(tile_square(a2, kernel2))
    t *= np.float32(U * TRANSFORM_BUDGET)
    return t


def _f32(a):
    return np.asarray(a, dtype=np.float32)


def conv_budgets(a, e_a, s_a, kernel, bias):
    """Budgets (e, s) of a convolution's output from its input's value and budgets
    (``e_a``/``s_a`` None: an exact input). The output's own rounding is the larger of
    the direct sum's ``u g(K+1) |a| * |w|`` and the transform term (spec 8.3)."""
    gk = np.float32(U * g(9 * a.shape[-1] + 1))
    abs_a = _f32(np.abs(a))
    a2 = abs_a * abs_a
    kernel = np.asarray(kernel, np.float64)
    k2 = kernel * kernel
    if e_a is None:
        e_c = gk * abs_conv(abs_a, np.abs(kernel))
        np.maximum(e_c, transform_budget(a2, k2), out=e_c)
        s_c = np.float32(ROUNDING_STD) * np.sqrt(abs_conv(a2, k2))
    else:
        e_c, own, s_c = abs_conv(np.stack([e_a, abs_a, s_a]), np.abs(kernel))
        own *= gk
        np.maximum(own, transform_budget(a2, k2), out=own)
        e_c += own
        del own
        s_c += np.float32(ROUNDING_STD) * np.sqrt(abs_conv(a2, k2))
    e_c += gk * _f32(np.abs(bias))
    return e_c, s_c


def _batch_norm(c, e_c, s_c, scale, beta, z, mean_in, var_in):
    """Budgets of a training-mode BatchNorm's output and of its two running stats.

    ``c`` and ``z`` are the float64 stages; per-channel quantities stay float64."""
    axes = (0, 1, 2)
    n = c.shape[0] * c.shape[1] * c.shape[2]
    mean = c.mean(axis=axes)
    centred = c - mean
    dev = _f32(np.abs(centred))
    var = np.square(centred).mean(axis=axes)
    sig2 = var + EPSILON
    inv = np.abs(scale / np.sqrt(sig2))
    abs_c = _f32(np.abs(c))
    if n > 1:
        gn = g(n)
        abs_mean = abs_c.mean(axis=axes, dtype=np.float64)
        d_mean = U * (gn * abs_mean + np.abs(mean))
        # mean(c^2) = var + mean^2 in exact arithmetic (float64 here: plenty)
        d_var = U * ((gn + 1.0) * (var + mean * mean)
                     + 2.0 * np.abs(mean) * (gn * abs_mean + np.abs(mean))
                     + mean * mean + var) + D_EPSILON
    else:
        d_mean = np.zeros_like(mean)
        d_var = np.zeros_like(var)
    zg = dev * _f32(inv)  # |scale * zhat|

    def through(e, d_mu, d_v):
        e_mean = e.mean(axis=axes, dtype=np.float64)
        out = e * np.float32(1.0 - 2.0 / n)
        out += _f32(e_mean + d_mu)
        out *= _f32(inv)
        out += zg * _f32(d_v / (2.0 * sig2))
        return out

    dv_in_e = 2.0 * (dev * e_c).mean(axis=axes, dtype=np.float64)
    dv_in_s = 2.0 * (dev * s_c).mean(axis=axes, dtype=np.float64)
    local = zg * np.float32(5.0)
    local += abs_c * _f32(inv)
    local += _f32(2.0 * np.abs(mean) * inv + np.abs(beta))
    local += np.float32(2.0) * _f32(np.abs(z))
    local *= np.float32(U)
    e_z = through(e_c, d_mean, d_var + dv_in_e) + local
    s_z = through(s_c, 0.0, dv_in_s)

    m = MOMENTUM
    new_mean = m * mean_in + (1.0 - m) * mean
    new_var = m * var_in + (1.0 - m) * var
    e_mean = ((1.0 - m) * (e_c.mean(axis=axes, dtype=np.float64) + d_mean)
              + U * (2.0 * np.abs(m * mean_in) + 2.0 * np.abs((1.0 - m) * mean)
                     + np.abs(new_mean))
              + D_MOMENTUM * np.abs(mean_in) + D_ONE_MINUS_MOMENTUM * np.abs(mean))
    e_var = ((1.0 - m) * (d_var + dv_in_e)
             + U * (2.0 * np.abs(m * var_in) + 4.0 * (1.0 - m) * var + np.abs(new_var))
             + D_MOMENTUM * np.abs(var_in) + D_ONE_MINUS_MOMENTUM * var)
    s_mean = (1.0 - m) * s_c.mean(axis=axes, dtype=np.float64)
    s_var = (1.0 - m) * dv_in_s
    return (e_z, s_z), (e_mean, s_mean), (e_var, s_var)


def raw_budgets(x, params, batch_stats, stages: dict, names=TENSORS) -> tuple[dict, dict]:
    """The unscaled model: ``(e, s)`` dicts over ``names`` (default :data:`TENSORS`;
    activations float32, stat vectors float64). A stage not in ``names`` is dropped as
    soon as the next stage has used it (a real-size case stores the output's budgets
    only: 230 MB less alive at 32x56x56x64)."""

    def drop(*stage):
        for k in stage:
            if k not in names:
                e.pop(k, None)
                s.pop(k, None)

    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    e, s = {}, {}
    e["conv1"], s["conv1"] = conv_budgets(f64(x), None, None, p["Conv_0"]["kernel"],
                                   p["Conv_0"]["bias"])
    (e["bn1"], s["bn1"]), em0, ev0 = _batch_norm(
        stages["conv1"], e["conv1"], s["conv1"], p["BatchNorm_0"]["scale"],
        p["BatchNorm_0"]["bias"], stages["bn1"], st["BatchNorm_0"]["mean"],
        st["BatchNorm_0"]["var"])
    drop("conv1")
    e["relu1"], s["relu1"] = e["bn1"], s["bn1"]
    e["conv2"], s["conv2"] = conv_budgets(stages["relu1"], e["relu1"], s["relu1"],
                                   p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
    drop("bn1", "relu1")
    (e["bn2"], s["bn2"]), em1, ev1 = _batch_norm(
        stages["conv2"], e["conv2"], s["conv2"], p["BatchNorm_1"]["scale"],
        p["BatchNorm_1"]["bias"], stages["bn2"], st["BatchNorm_1"]["mean"],
        st["BatchNorm_1"]["var"])
    drop("conv2")
    e["sum"] = e["bn2"] + np.float32(U) * _f32(np.abs(stages["sum"]))
    s["sum"] = s["bn2"]
    drop("bn2")
    e["output"], s["output"] = e["sum"], s["sum"]
    drop("sum")
    for name, (ee, ss) in (("BatchNorm_0/mean", em0), ("BatchNorm_0/var", ev0),
                           ("BatchNorm_1/mean", em1), ("BatchNorm_1/var", ev1)):
        e[name], s[name] = ee, ss
    drop(*STAT_NAMES)
    return e, s


@blas.single_threaded
def budgets(x, params, batch_stats, stages: dict, names=TENSORS) -> Budgets:
    """Stored budgets of a case: ``S e`` and ``S s`` as float32, rounded up, for the
    tensors ``names`` (default: all of :data:`TENSORS`; the same values either way)."""
    e, s = raw_budgets(x, params, batch_stats, stages, names)
    up = 1.0 + 2.0 ** -18  # covers the float32 evaluation of the non-negative sums

    def f32(a):
        return (np.asarray(a, np.float64) * (SAFETY * up)).astype(np.float32)

    return Budgets(fp32={k: f32(v) for k, v in e.items()},
                   conv={k: f32(v) for k, v in s.items()})
