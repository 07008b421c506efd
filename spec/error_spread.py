"""The spread model: how large a correct float32 port's errors are *on average*.

The budgets of :mod:`resblock.spec.error_model` bound each element's error on its own,
so they must cover the worst element of the worst algorithm; they grow with the square
root of every reduction and add propagated errors by the triangle inequality. That is
right for one element, but it hides an error that is far larger than float32's in every
element and still under each element's worst case (a TF32 or bfloat16 convolution at
512 channels, an unbiased variance at 2^14 values per channel). TOSA's dot-product
compliance check adds, beside its per-element bound, a test of the *distribution* of the
normalised errors over a tensor; this module gives the scale that test normalises by
(spec section 8.3).

For every element the model gives ``sigma``, an upper estimate of the root-mean-square
error of a correct float32 evaluation, under the standard probabilistic assumption
(Higham and Mary, 2019) that rounding errors are independent, zero-mean and at most
``u = 2^-24`` relative. Errors are carried in two parts:

* ``v``: the variance of errors that are independent from element to element (each
  element's own roundings, and what reaches it from independent errors upstream). It
  propagates through linear maps with squared coefficients: a 3x3 convolution of ``v``
  with ``w^2``, a sum of ``n`` such errors by ``sum(coef^2 v)``, not ``sum(|coef|) e``.
* ``k``: a standard deviation of errors that are the same for every element of a
  channel, the rounding of the batch mean and variance and what they cause. A sum over
  the elements of a channel adds them coherently, so reductions over ``N, H, W`` take
  them by the triangle inequality (``mean(k)``). Channels are independent of each other:
  a convolution combines them in quadrature, with the factor 9 of Cauchy-Schwarz for
  the nine taps that see the same channel's error (``sqrt(9 conv(k^2, w^2))``).

The rounding of a float32 sum of ``n`` terms ``t`` (any order, recursive summation being
the worst of the usual ones) has variance at most ``u^2 n ((sum t)^2 + sum t^2)``: for
recursive summation it is ``u^2/3 sum_j s_j^2`` over the partial sums ``s_j``, at most
``u^2 n ((sum t)^2/3 + sum t^2/2) / 3``; the factor 3 to 6 left over covers blocked,
Winograd and FFT evaluation orders (measured in DESIGN section 6). A convolution
output sums ``K + 1 = 9C + 1`` terms; a batch mean ``n = N*H*W``. Its own rounding
variance is the larger of that and ``(u K_T tile_rms)^2`` with the spread's ``K_T = 2``
(:func:`resblock.spec.error_model.tile_square`): where an output has one or two nonzero
products, a Winograd or FFT convolution's rounding carries every tap (spec 7.0).

Reduced-precision convolution inputs (the ``tf32-conv`` and ``bf16-conv`` profiles) add,
per unit ``u_conv^2``, the variance ``(8/3) sum (a w)^2``: two operands per product, each
rounded to nearest (variance ``u_conv^2/3``) or truncated (second moment
``4 u_conv^2/3``).

Per tensor the golden file stores ``sigma/<t>`` (``sqrt(v + k^2)``) and
``sigma_conv/<t>`` (the same per unit ``u_conv``), float32 rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec.constants import EPSILON, MOMENTUM, STAT_NAMES
from resblock.spec.error_model import (
    D_EPSILON,
    D_MOMENTUM,
    D_ONE_MINUS_MOMENTUM,
    FLOOR,
    TRANSFORM_SPREAD,
    U,
    abs_conv,
    for_blocks,
    pad_hw,
    sample_blocks,
    tile_square,
)

# Second moment, per unit u_conv^2, of the relative error of one product whose two
# operands are each rounded to u_conv (round to nearest: 2/3; truncation: 8/3).
CONV_ROUNDING_VAR = 8.0 / 3.0
SPREAD_TENSORS = ("output",) + STAT_NAMES
_AXES = (0, 1, 2)


def sum_var(n: int, total, sum_sq):
    """Variance of the rounding of a float32 sum of ``n`` terms with sum ``total`` and sum
    of squares ``sum_sq`` (the recursive-summation estimate with its margin)."""
    if n <= 1:
        return np.zeros_like(np.asarray(total, np.float64))
    return U * U * n * (np.square(total) + sum_sq)


@dataclass(frozen=True)
class Err:
    """An error estimate: ``v`` independent variance, ``k`` coherent standard deviation
    (both per element), for the float32 part and per unit ``u_conv`` (``vs``, ``ks``);
    ``sources``: channel errors known exactly up to one number per channel; ``kx``
    (``kxs``): the per-element standard deviation of the image of such sources after a
    convolution, whose effect on the next batch statistics is computed exactly (so
    reductions do not take it again)."""

    v: np.ndarray
    k: np.ndarray
    vs: np.ndarray
    ks: np.ndarray
    sources: tuple = ()
    kx: np.ndarray | float = 0.0
    kxs: np.ndarray | float = 0.0

    def sigma(self) -> np.ndarray:
        return np.sqrt(self.v + np.square(self.k + self.kx + _source_rms(self, "sigma")))

    def sigma_conv(self) -> np.ndarray:
        return np.sqrt(self.vs + np.square(self.ks + self.kxs + _source_rms(self, "sigma_s")))


@dataclass(frozen=True)
class ChannelErr:
    """Per-channel standard deviations of a BatchNorm's batch mean and variance
    (absolute) and of its ``inv = 1/sqrt(var + eps)`` (relative), float32 part and per
    unit ``u_conv`` (``_s``)."""

    mean: np.ndarray
    var: np.ndarray
    rel: np.ndarray
    mean_s: np.ndarray
    var_s: np.ndarray
    rel_s: np.ndarray


@dataclass(frozen=True)
class ChannelSource:
    """An error shared by every element of each channel, known exactly up to one random
    number per channel: the error is ``eps_c * direction[..., c]`` with ``eps_c`` of
    standard deviation ``sigma[c]`` (``sigma_s[c]`` per unit ``u_conv``), independent
    between channels. A BatchNorm's batch mean and ``inv`` errors reach the next
    convolution this way."""

    direction: np.ndarray
    sigma: np.ndarray
    sigma_s: np.ndarray


def exact(shape) -> Err:
    z = np.zeros(shape)
    return Err(z, z, z, z)


@dataclass(frozen=True)
class Reductions:
    """What a convolution's errors do to the batch statistics of the BatchNorm after it:
    standard deviations per output channel of the error of ``mean(c)`` and of
    ``2 mean((c - mean) e_c)`` (the variance's first-order change), float32 part and per
    unit ``u_conv``. Neighbouring outputs share inputs (each input pixel feeds nine taps)
    and, under a reduced-precision profile, every position shares the rounded weights,
    so these are not the element spreads averaged as if independent."""

    mean: np.ndarray
    var: np.ndarray
    mean_s: np.ndarray
    var_s: np.ndarray


SOURCE_ROWS = 1024  # positions per step of conv()'s channel-source images (in cache)


def tap_moments(a, dev):
    """``(m1, m2)``: ``m1[i, j, c] = mean over positions of a shifted by tap (i, j)`` and
    ``m2[i, j, c, f] = mean of that shifted a times dev[..., f]`` (SAME zero padding).

    Summed block by block (:func:`sample_blocks`), each block's float32 product widened
    to float64: one (C, P) by (P, F) product over all P positions runs 100x slower on a
    loaded machine (OpenBLAS's threads split the long axis and wait on each other)."""
    n, h, w, ch = a.shape
    a32 = np.asarray(a, np.float32)
    dev32 = np.asarray(dev, np.float32)
    m1 = np.zeros((3, 3, ch))
    m2 = np.zeros((3, 3, ch, dev32.shape[-1]))
    for blk in sample_blocks(n, h, w):
        ap = pad_hw(a32[blk])
        rows = ap.shape[0] * h * w
        dev2 = dev32[blk].reshape(rows, -1)
        for i in range(3):
            for j in range(3):
                sl = ap[:, i:i + h, j:j + w, :].reshape(rows, ch)
                m1[i, j] += sl.sum(axis=0, dtype=np.float64)
                m2[i, j] += (sl.T @ dev2).astype(np.float64)
    return m1 / (n * h * w), m2 / (n * h * w)


def conv(a, err: Err, kernel, bias, c) -> tuple[Err, tuple, Reductions]:
    """Spread of ``c = conv3x3(a, kernel) + bias`` (``a``, ``c``: float64 stage values),
    per channel source of ``err`` the moments a following BatchNorm needs,
    ``(sigma, sigma_s, M_mean, M_var)`` with ``M_mean[c_in, f] = mean(T)`` and
    ``M_var[c_in, f] = mean((c - mean(c)) T)`` of that input channel's image ``T``, and
    the :class:`Reductions` of its other errors."""
    n = c.shape[0] * c.shape[1] * c.shape[2]
    k_terms = 9 * a.shape[-1] + 1
    w2 = np.square(kernel)
    # The batch statistics: a product's rounding is its own, but an input's error (and,
    # per unit u_conv, an input's rounding, half of CONV_ROUNDING_VAR) reaches the nine
    # outputs around it, so the mean sees it with the taps' sum W = sum_t w[t, c, f]
    # (exact); the centred product with dev, by Cauchy-Schwarz (a factor 9). A rounded
    # weight is the same at every position: its effect on the mean and the variance is
    # sum_t w[t, c, f] times the mean of a (of a times dev), shifted by the tap, exactly.
    # Each reduction is taken as soon as its operands exist and they are dropped at once:
    # at most eight float64 tensors alive instead of thirteen (250 MB less at
    # 32x56x56x64; the same expressions, the same bits).
    taps = np.square(kernel.sum(axis=(0, 1)))  # W^2, (C, F)
    half = CONV_ROUNDING_VAR / 2.0
    a2 = np.square(a)
    a2_sum = a2.sum(axis=_AXES)
    t2 = abs_conv(a2, w2)  # float32: widened by each use (exactly, as astype would)
    tile2 = tile_square(a2, w2)
    del a2
    v_prop = _abs_conv64(err.v, w2)
    # v_round = max(U^2 (K + 1) (t2 + b^2 + c^2), (U K_T)^2 tile_rms^2), in place
    v_round = np.add(t2, np.square(bias))
    scratch = np.square(c)
    v_round += scratch
    v_round *= U * U * k_terms
    np.maximum(v_round, tile2 * ((U * TRANSFORM_SPREAD) ** 2), out=v_round)
    del tile2
    dev2 = c - c.mean(axis=_AXES)
    dev = dev2.astype(np.float32)  # what tap_moments reads
    np.square(dev2, out=dev2)
    red_mean = np.sqrt(v_round.sum(axis=_AXES) / (n * n)
                       + err.v.sum(axis=_AXES) @ taps / (n * n))
    # red_var = 2 sqrt(sum(dev2 (v_round + 9 v_prop))) / n
    np.multiply(v_prop, 9.0, out=scratch)
    scratch += v_round
    scratch *= dev2
    red_var = 2.0 * np.sqrt(scratch.sum(axis=_AXES)) / n
    v = np.add(v_prop, v_round, out=v_prop)
    del v_prop, v_round
    vs_prop = _abs_conv64(err.vs, w2)
    vs = np.multiply(t2, CONV_ROUNDING_VAR, dtype=np.float64)
    vs += vs_prop
    # var_s_own = 2 sqrt(9 sum(dev2 (vs_prop + half t2))) / n
    np.multiply(t2, half, out=scratch, dtype=np.float64)
    scratch += vs_prop
    scratch *= dev2
    var_s_own = 2.0 * np.sqrt(9.0 * scratch.sum(axis=_AXES)) / n
    del vs_prop, t2, dev2, scratch
    k = _coherent_conv(_add(err.k, err.kx), w2)
    ks = _coherent_conv(_add(err.ks, err.kxs), w2)
    m1, m2 = tap_moments(a, dev)
    red = Reductions(
        mean=red_mean,
        var=red_var,
        mean_s=np.sqrt((err.vs.sum(axis=_AXES) + half * a2_sum) @ taps / (n * n)
                       + half * np.einsum("ijc,ijcf->f", np.square(m1), w2)),
        var_s=(var_s_own
               + 2.0 * np.sqrt(half * (np.square(m2) * w2).sum(axis=(0, 1, 2)))))
    k2 = np.zeros(c.shape, np.float32)
    ks2 = np.zeros(c.shape, np.float32)
    moments = []
    w_taps = np.asarray(kernel, np.float64)
    kernel32 = np.asarray(kernel, np.float32)
    f_out = kernel32.shape[-1]
    taps_of = [np.ascontiguousarray(kernel32[:, :, ci, :].reshape(9, f_out))
               for ci in range(kernel32.shape[2])]
    for src in err.sources:
        # mean(T) and mean(dev T) of each input channel's image T, from the taps:
        # sum_t w[t, ci, f] * (correlation of the direction with 1 and with dev).
        d1, d2 = tap_moments(src.direction, dev)
        m_mean = np.einsum("ijc,ijcf->cf", d1, w_taps)
        m_var = np.einsum("ijcf,ijcf->cf", d2, w_taps)
        sig = [np.float32(v) for v in src.sigma]
        sig_s = [np.float32(v) for v in src.sigma_s]
        # The image of one input channel's error at a time, a block of samples and of
        # SOURCE_ROWS positions at a time into reused buffers (in cache; the same
        # float32 operations element by element as whole tensors), blocks on every core.
        def block(blk, src=src, sig=sig, sig_s=sig_s, k2=k2, ks2=ks2):
            t_buf = np.empty((SOURCE_ROWS, f_out), np.float32)
            ts_buf = np.empty((SOURCE_ROWS, f_out), np.float32)
            patches = channel_patches(src.direction[blk])
            k2b, ks2b = k2[blk].reshape(-1, f_out), ks2[blk].reshape(-1, f_out)
            for r in range(0, k2b.shape[0], SOURCE_ROWS):
                kk, kks = k2b[r:r + SOURCE_ROWS], ks2b[r:r + SOURCE_ROWS]
                t, ts = t_buf[:kk.shape[0]], ts_buf[:kk.shape[0]]
                for ci in range(a.shape[-1]):
                    np.matmul(patches[ci, r:r + SOURCE_ROWS], taps_of[ci], out=t)
                    np.multiply(t, sig_s[ci], out=ts)
                    t *= sig[ci]
                    kk += np.square(t, out=t)
                    kks += np.square(ts, out=ts)

        for_blocks(block, sample_blocks(*c.shape[:3]))
        moments.append((src.sigma, src.sigma_s, m_mean, m_var))
    if not err.sources:  # exactly zero (calloc'd pages, never touched: no memory)
        return Err(v, k, vs, ks, kx=np.zeros(c.shape), kxs=np.zeros(c.shape)), (), red
    block = None  # its defaults hold k2 and ks2
    del dev, block
    kx = k2.astype(np.float64)
    del k2
    kxs = ks2.astype(np.float64)
    del ks2
    return (Err(v, k, vs, ks, kx=np.sqrt(kx, out=kx), kxs=np.sqrt(kxs, out=kxs)),
            tuple(moments), red)


def _abs_conv64(a, w2) -> np.ndarray:
    """:func:`abs_conv` widened to float64; an input that is exactly zero (the first
    convolution's input errors) gives exact zeros without the convolution's work."""
    if not np.any(a):
        return np.zeros(np.shape(a)[:-1] + (np.shape(w2)[-1],))
    return abs_conv(a, w2).astype(np.float64)


def _add(a, b):
    """``a + b`` of two error parts (``a`` a tensor, ``b`` one of its shape or a number);
    where one is exactly zero, the other without a new tensor: the coherent parts are
    zero at both layers of the forward, and :func:`_coherent_conv` squares the sum, so a
    ``+ 0`` (that turns -0.0 into 0.0) changes no value."""
    if not np.any(b):
        return a
    if not np.any(a) and np.shape(b) == np.shape(a):
        return b
    return a + b


def _coherent_conv(k, w2) -> np.ndarray:
    """``sqrt(9 conv(k^2, w^2))``: a coherent error's image through a convolution
    (zeros without work or memory where ``k`` is exactly zero: the first layer's)."""
    if not np.any(k):
        return np.zeros(np.shape(k)[:-1] + (np.shape(w2)[-1],))
    return np.sqrt(9.0 * _abs_conv64(np.square(k), w2))


def _scaled(inv, a) -> np.ndarray:
    """``inv * a`` (``inv`` per channel, finite), exact zeros kept without memory."""
    if np.ndim(a) == 0 or np.any(a):
        return inv * a
    return np.zeros(np.broadcast_shapes(np.shape(inv), np.shape(a)))


def single_channel_conv(d, kernel_c):
    """3x3 SAME convolution of one channel ``d`` (N, H, W) with ``kernel_c`` (3, 3, F):
    one (N*H*W, 9) by (9, F) product."""
    n, h, w = d.shape
    dp = pad_hw(np.asarray(d, np.float32), axes=(1, 2))
    patches = np.stack([dp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                       axis=-1)
    kc = np.asarray(kernel_c, np.float32).reshape(9, -1)
    return (patches.reshape(-1, 9) @ kc).reshape(n, h, w, -1)


def channel_patches(d):
    """The 3x3 SAME patches of every channel of ``d`` (N, H, W, C): ``(C, N*H*W, 9)``
    float32, channel ``ci``'s the rows :func:`single_channel_conv` multiplies."""
    n, h, w, ch = d.shape
    dp = pad_hw(np.asarray(d, np.float32))
    out = np.empty((ch, n * h * w, 9), np.float32)
    for t, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        out[:, :, t] = dp[:, i:i + h, j:j + w, :].reshape(-1, ch).T
    return out


def channel_errors(c, err: Err, moments=(), red: Reductions | None = None) -> ChannelErr:
    """Errors of a channel's float32 batch mean and of ``inv``: their own rounding
    (single-pass ``E[c^2] - E[c]^2``, the spec's formula; two-pass and Welford err less)
    and what the errors already in ``c`` do to them."""
    n = c.shape[0] * c.shape[1] * c.shape[2]
    mean = c.mean(axis=_AXES)
    if n == 1:  # the mean is the value; the variance is exactly 0 in every evaluation
        zero = np.zeros_like(mean)
        return ChannelErr(np.sqrt(err.v[0, 0, 0]) + err.k[0, 0, 0], zero, zero,
                          np.sqrt(err.vs[0, 0, 0]) + err.ks[0, 0, 0], zero, zero)
    dev = c - mean
    var = np.square(dev).mean(axis=_AXES)
    ec2 = var + mean * mean
    sig2 = var + EPSILON
    var_mean = sum_var(n, n * mean, n * ec2) / (n * n) + U * U * mean * mean
    var_ec2 = (sum_var(n, n * ec2, np.square(np.square(c)).sum(axis=_AXES)) / (n * n)
               + U * U * ec2 * ec2)
    var_var = var_ec2 + 4.0 * mean * mean * var_mean + U * U * (mean ** 4 + var * var)
    adev = np.abs(dev)
    if red is None:  # element-wise independent errors
        red = Reductions(np.sqrt(err.v.sum(axis=_AXES)) / n,
                         2.0 * np.sqrt((np.square(dev) * err.v).sum(axis=_AXES)) / n,
                         np.sqrt(err.vs.sum(axis=_AXES)) / n,
                         2.0 * np.sqrt((np.square(dev) * err.vs).sum(axis=_AXES)) / n)
    mean_in = red.mean + err.k.mean(axis=_AXES)
    var_in = red.var + 2.0 * (adev * err.k).mean(axis=_AXES)
    for sig, _, m_mean, m_var in moments:  # exact: independent input channels
        mean_in = mean_in + np.sqrt(np.square(sig[:, None] * m_mean).sum(axis=0))
        var_in = var_in + 2.0 * np.sqrt(np.square(sig[:, None] * m_var).sum(axis=0))
    d_mean = np.sqrt(var_mean) + mean_in
    d_var = np.sqrt(var_var) + var_in + D_EPSILON
    # inv: the sqrt and the division (or an approximate rsqrt, GPU-style: 2^-22.9
    # relative) add up to 3u.
    rel = d_var / (2.0 * sig2) + 3.0 * U
    mean_s = red.mean_s + err.ks.mean(axis=_AXES)
    var_s = red.var_s + 2.0 * (adev * err.ks).mean(axis=_AXES)
    for _, sig_s, m_mean, m_var in moments:
        mean_s = mean_s + np.sqrt(np.square(sig_s[:, None] * m_mean).sum(axis=0))
        var_s = var_s + 2.0 * np.sqrt(np.square(sig_s[:, None] * m_var).sum(axis=0))
    return ChannelErr(d_mean, d_var, rel, mean_s, var_s, var_s / (2.0 * sig2))


def batch_norm(c, err: Err, scale, beta, z, mean_in, var_in, moments=(), red=None):
    """Spread of a training-mode BatchNorm's output and of its two running statistics
    (``c``, ``z``: float64 stages). Returns ``(Err of z, ChannelErr, mean_sigma,
    mean_sigma_conv, var_sigma, var_sigma_conv)``."""
    n = c.shape[0] * c.shape[1] * c.shape[2]
    ch = channel_errors(c, err, moments, red)
    mean = c.mean(axis=_AXES)
    var = np.square(c - mean).mean(axis=_AXES)
    m = MOMENTUM
    new_mean = m * mean_in + (1.0 - m) * mean
    new_var = m * var_in + (1.0 - m) * var
    s_mean = ((1.0 - m) * ch.mean
              + U * np.sqrt(2.0 * (m * mean_in) ** 2 + 2.0 * ((1.0 - m) * mean) ** 2
                            + new_mean ** 2)
              + D_MOMENTUM * np.abs(mean_in) + D_ONE_MINUS_MOMENTUM * np.abs(mean))
    # Truncated (not rounded) convolution inputs shrink every product by about u_conv per
    # operand on average: a scaling of c that the normalisation divides out, but that
    # moves the batch mean and variance themselves by 2 u_conv |mean| and 4 u_conv var.
    s_mean_conv = (1.0 - m) * (ch.mean_s + 2.0 * np.abs(mean))
    sig2 = var + EPSILON
    s_var = ((1.0 - m) * ch.var
             + U * np.sqrt(2.0 * (m * var_in) ** 2 + 16.0 * ((1.0 - m) * var) ** 2
                           + new_var ** 2)
             + D_MOMENTUM * np.abs(var_in) + D_ONE_MINUS_MOMENTUM * var)
    s_var_conv = (1.0 - m) * (ch.var_s + 4.0 * var)
    if n == 1:  # (c - mean) is exactly 0: z is beta, up to the folded form's rounding
        inv = np.abs(scale) / np.sqrt(sig2)
        k = np.broadcast_to(U * (2.0 * np.abs(mean * inv) + np.abs(beta)), c.shape)
        zero = np.zeros(c.shape)
        return (Err(zero, np.array(k), zero, zero), ch, s_mean, s_mean_conv, s_var,
                s_var_conv)
    inv = np.abs(scale) / np.sqrt(sig2)
    # v = inv^2 v_c + U^2 (5 zg^2 + (c inv)^2 + 2 z^2), zg = |scale * zhat|; in place
    rounding = np.abs(c - mean)
    rounding *= inv
    np.square(rounding, out=rounding)
    rounding *= 5.0
    scratch = np.multiply(c, inv)
    rounding += np.square(scratch, out=scratch)
    np.square(z, out=scratch)
    scratch *= 2.0
    rounding += scratch
    del scratch
    rounding *= U * U
    v = np.multiply(np.square(inv), err.v)
    v += rounding
    del rounding
    vs = np.square(inv) * err.vs
    # The channel errors move z along 1 (the mean, and the folded form's per-channel
    # rounding) and along z - beta (inv): exact sources for the next convolution.
    local = U * (2.0 * np.abs(mean * inv) + np.abs(beta))
    sources = (ChannelSource(np.broadcast_to(1.0, c.shape), np.hypot(inv * ch.mean, local),
                             inv * ch.mean_s),
               ChannelSource(z - beta, ch.rel, ch.rel_s))
    return (Err(v, _scaled(inv, err.k), vs, _scaled(inv, err.ks), sources,
                _scaled(inv, err.kx), _scaled(inv, err.kxs)), ch,
            s_mean, s_mean_conv, s_var, s_var_conv)


def relu(out, err: Err) -> Err:
    """``relu1``'s errors from bn1's (ReLU is 1-Lipschitz): the element-wise parts are
    kept whole (an input near 0 may pass on either side), the channel sources act only
    where the ReLU passes (``out > 0``)."""
    open_ = out > 0
    return Err(err.v, err.k, err.vs, err.ks, tuple(
        ChannelSource(src.direction * open_, src.sigma, src.sigma_s) for src in err.sources),
        err.kx, err.kxs)


def _source_rms(err: Err, which: str) -> np.ndarray:
    """Per-element standard deviation of the channel sources of ``err`` (summed in place
    from 0, in the sources' order)."""
    out = np.zeros(err.v.shape)
    for src in err.sources:
        t = np.multiply(getattr(src, which), src.direction)
        out += np.square(t, out=t)
        del t
    return np.sqrt(out, out=out)


def _root_sum_square(v, k, in_place: bool = False) -> np.ndarray:
    """``sqrt(v + k^2)`` (:meth:`Err.sigma` of an error without sources or ``kx``: the
    same bits, ``k`` being non-negative); ``in_place``: in ``k``'s tensor."""
    out = np.square(k, out=k if in_place else None)
    out += v
    return np.sqrt(out, out=out)


@dataclass(frozen=True)
class ForwardSpread:
    """The spread of a whole forward: ``sigma``/``sigma_conv`` of :data:`SPREAD_TENSORS`,
    and the pieces the backward spread builds on (``err[stage]``, ``channel[layer]``;
    ``own[layer]``: the channel errors a BatchNorm makes itself or receives as
    element-wise errors, without those carried from the BatchNorm before it as channel
    sources; ``local[layer]``: the folded form's per-channel rounding, in output units)."""

    sigma: dict
    sigma_conv: dict
    err: dict
    channel: dict
    own: dict
    local: dict


def sigmas_only(sp: ForwardSpread) -> ForwardSpread:
    """``sp`` without the per-element errors the backward model builds on (``err``,
    ``own``, ``local``; ``channel`` is kept): what ``forward_spread(...,
    keep_errors=False)`` returns, so a caller that needed both drops them here."""
    return ForwardSpread(sigma=sp.sigma, sigma_conv=sp.sigma_conv, err={},
                         channel=sp.channel, own={}, local={})


@blas.single_threaded
def forward_spread(x, params, batch_stats, stages: dict,
                   keep_errors: bool = True) -> ForwardSpread:
    """The spread of a whole forward from the oracle's float64 ``stages``.

    ``keep_errors`` False (what the stored spreads need; the backward model needs them
    kept): ``err``, ``own`` and ``local`` are left empty and each stage's error arrays
    are dropped once the next stage is computed, about 1.3 GB less at 32x56x56x64 (a
    float64 tensor is 51 MB and a stage's error holds up to eight). The spreads are the
    same either way."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in batch_stats.items()}
    err, chan, own, local, sig, sig_c = {}, {}, {}, {}, {}, {}
    a, a_err = f64(x), exact(np.shape(x))  # the float64 x: dropped after the first layer
    for conv_name, layer, conv_stage, bn_stage in (("Conv_0", "BatchNorm_0", "conv1", "bn1"),
                                                   ("Conv_1", "BatchNorm_1", "conv2", "bn2")):
        ce, moments, red = conv(a, a_err, p[conv_name]["kernel"], p[conv_name]["bias"],
                                stages[conv_stage])
        del a_err
        e, ch, sm, smc, sv, svc = batch_norm(
            stages[conv_stage], ce, p[layer]["scale"], p[layer]["bias"],
            stages[bn_stage], st[layer]["mean"], st[layer]["var"], moments, red)
        chan[layer] = ch
        c = stages[conv_stage]
        if keep_errors:  # (what the backward model builds on, as err)
            own[layer] = channel_errors(c, ce, (), red) if moments else ch
        if keep_errors:
            err[conv_stage], err[bn_stage] = ce, e
        del ce, moments, red
        if keep_errors:
            var = np.square(c - c.mean(axis=_AXES)).mean(axis=_AXES)
            inv = np.abs(p[layer]["scale"]) / np.sqrt(var + EPSILON)
            local[layer] = U * (2.0 * np.abs(c.mean(axis=_AXES) * inv)
                                + np.abs(p[layer]["bias"]))
        sig[f"{layer}/mean"], sig_c[f"{layer}/mean"] = sm, smc
        sig[f"{layer}/var"], sig_c[f"{layer}/var"] = sv, svc
        # ReLU is 1-Lipschitz and passes nothing where it is closed: relu1, Conv_1's
        # input, carries BatchNorm_0's errors.
        if conv_stage == "conv1":
            a, a_err = stages["relu1"], relu(stages["relu1"], e)
            if keep_errors:
                err["relu1"] = a_err
            del e  # its sources' unmasked directions: 100 MB
    b2 = e
    del e
    # The output's error: the sum's own rounding, and the sources' images taken
    # element-wise (an Err without sources, whose sigma is sqrt(v + k^2)).
    v = np.square(stages["sum"])
    v *= U * U
    v += b2.v
    k = _source_rms(b2, "sigma")
    k += _add(b2.k, b2.kx)
    ks = _source_rms(b2, "sigma_s")
    ks += _add(b2.ks, b2.kxs)
    if keep_errors:
        err["sum"] = Err(v, k, b2.vs, ks)
    sig_c["output"] = _root_sum_square(b2.vs, ks, in_place=not keep_errors)
    del b2, ks
    sig["output"] = _root_sum_square(v, k, in_place=not keep_errors)
    return ForwardSpread(sigma=sig, sigma_conv=sig_c, err=err, channel=chan, own=own,
                         local=local)


def stored(a) -> np.ndarray:
    """float32, rounded up, floored at float32's smallest normal number."""
    a = np.maximum(np.asarray(a, np.float64) * (1.0 + 2.0 ** -18), FLOOR)
    return a.astype(np.float32)
