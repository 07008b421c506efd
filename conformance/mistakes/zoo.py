"""A zoo of correct float32 algorithms for the block: the error model's meta-tests.

The pitfall twins of :mod:`resblock.conformance.mistakes.variants` show that the checker rejects
wrong implementations; the zoo shows that it accepts right ones computed differently
from the reference: other convolution algorithms (direct, im2col/GEMM, FFT, Winograd),
other statistics (pairwise, blocked, chunked Welford, two-pass, Kahan, float64
accumulators), both float32 forms of the normalisation and a fused conv+BN+ReLU order.
Every row is a table entry, float32 throughout (NumPy; SciPy's single-precision FFT),
built from three interchangeable parts.

``expect``: "conforms" (must conform on every grid: a reject is a false reject of the
rule), or "envelope" (sequential float32 accumulation over all N*H*W values: inside the
model's envelope for short reductions, rejected and named as the pitfall
``sequential_f32_stats`` above it; spec section 8), or "measured" (Winograd F(6x6,3x3):
documented either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np

from resblock.spec.constants import EPSILON, MOMENTUM

F32 = np.float32
EXPECT = ("conforms", "envelope", "measured")


@dataclass(frozen=True)
class Algorithm:
    """One correct float32 algorithm: a convolution, a statistics and a normalisation
    method (names of :data:`CONVS`, :data:`STATS`, :data:`NORMS`)."""

    name: str
    conv: str
    stats: str
    norm: str
    why: str
    expect: str = "conforms"

    def __post_init__(self):
        for part, table in (("conv", CONVS), ("stats", STATS), ("norm", NORMS)):
            if getattr(self, part) not in table:
                raise ValueError(f"zoo {self.name}: {part} {getattr(self, part)!r} not in "
                                 f"{sorted(table)}")
        if self.expect not in EXPECT:
            raise ValueError(f"zoo {self.name}: expect {self.expect!r} not in {EXPECT}")


# -- convolutions: NHWC float32 x HWIO float32 -> NHWC float32, SAME, plus bias ----------
def conv_direct(x, k, b):
    """Nine shifted matmuls accumulated in float32 (BLAS inside each)."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, k.shape[-1]), F32)
    for i in range(3):
        for j in range(3):
            y += xp[:, i:i + h, j:j + w, :] @ k[i, j]
    return y + b


def conv_im2col(x, k, b):
    """One GEMM over (N*H*W, 9C) patches, bias added after."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                          axis=-1)
    return (cols.reshape(-1, 9 * c) @ k.reshape(9 * c, -1)).reshape(n, h, w, -1) + b


def conv_fft(x, k, b):
    """Single-precision FFT over the padded plane; channels summed in the frequency domain."""
    import scipy.fft

    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    size = (h + 2, w + 2)
    xf = scipy.fft.rfft2(xp, s=size, axes=(1, 2))  # complex64
    kf = scipy.fft.rfft2(k[::-1, ::-1], s=size, axes=(0, 1))
    yf = np.einsum("nhwc,hwcf->nhwf", xf, kf.astype(np.complex64))
    y = scipy.fft.irfft2(yf, s=size, axes=(1, 2))
    return np.ascontiguousarray(y[:, 2:, 2:, :]).astype(F32) + b


@cache
def winograd_matrices(m: int):
    """``(AT, G, BT)`` of Winograd's minimal filtering F(m, 3) (Toom-Cook, points 0, +-1,
    +-2, +-1/2, and infinity), fractions moved into G; float32."""
    points = [Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2),
              Fraction(1, 2), Fraction(-1, 2)]
    alpha = m + 2
    pts = points[:alpha - 1]

    def vander(cols):
        rows = [[p ** j for j in range(cols)] for p in pts]
        rows.append([Fraction(0)] * (cols - 1) + [Fraction(1)])  # the point at infinity
        return rows

    v = vander(alpha)
    inv = _inverse(v)  # V^-1, exact
    bt = [list(col) for col in zip(*inv, strict=True)]  # V^-T
    # Scale each row of B^T to integers; the inverse scale goes into G (wincnn's choice).
    scale = []
    for r in bt:
        den = 1
        for q in r:
            den = den * q.denominator // np.gcd(den, q.denominator)
        scale.append(den)
    bt = [[q * s for q in r] for r, s in zip(bt, scale, strict=True)]
    g = [[q / s for q in r] for r, s in zip(vander(3), scale, strict=True)]
    at = [list(col) for col in zip(*vander(m), strict=True)]
    as32 = lambda a: np.array([[float(q) for q in r] for r in a], dtype=F32)  # noqa: E731
    return as32(at), as32(g), as32(bt)


def _inverse(a):
    """Exact inverse of a square matrix of Fractions (Gauss-Jordan)."""
    n = len(a)
    aug = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(a)]
    for col in range(n):
        piv = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        p = aug[col][col]
        aug[col] = [q / p for q in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                f = aug[r][col]
                aug[r] = [q - f * pq for q, pq in zip(aug[r], aug[col], strict=True)]
    return [r[n:] for r in aug]


def conv_winograd(x, k, b, m: int):
    """Winograd F(m x m, 3 x 3): transformed tiles, one GEMM per transform point."""
    at, g, bt = winograd_matrices(m)
    alpha = m + 2
    n, h, w, c = x.shape
    th, tw = -(-h // m), -(-w // m)
    xp = np.pad(x, ((0, 0), (1, 1 + th * m - h), (1, 1 + tw * m - w), (0, 0)))
    # tiles: (n, th, tw, alpha, alpha, c)
    idx_h = (np.arange(th)[:, None] * m + np.arange(alpha)[None, :])
    idx_w = (np.arange(tw)[:, None] * m + np.arange(alpha)[None, :])
    tiles = xp[:, idx_h[:, None, :, None], idx_w[None, :, None, :], :]
    v = np.einsum("ai,ntsijc,bj->abntsc", bt, tiles, bt, optimize=True).astype(F32)
    u = np.einsum("ai,ijcf,bj->abcf", g, k, g, optimize=True).astype(F32)
    vv = v.reshape(alpha * alpha, -1, c)
    mm = np.matmul(vv, u.reshape(alpha * alpha, c, -1))  # (a*a, tiles, F)
    mm = mm.reshape(alpha, alpha, n, th, tw, -1)
    y = np.einsum("ia,abntsf,jb->ntisjf", at, mm, at, optimize=True).astype(F32)
    y = y.reshape(n, th * m, tw * m, -1)[:, :h, :w, :]
    return np.ascontiguousarray(y) + b


CONVS = {
    "direct": conv_direct,
    "im2col": conv_im2col,
    "fft": conv_fft,
    "winograd2": lambda x, k, b: conv_winograd(x, k, b, 2),
    "winograd4": lambda x, k, b: conv_winograd(x, k, b, 4),
    "winograd6": lambda x, k, b: conv_winograd(x, k, b, 6),
}


# -- statistics: rows (C, n) float32 -> (mean, biased var) float32 ----------------------
def _fast_var(s1, s2, n):
    mean = s1 / F32(n)
    return mean, np.maximum(s2 / F32(n) - mean * mean, F32(0))


def stats_pairwise(rows):
    """Flax's single-pass formula with NumPy's pairwise sums (contiguous axis)."""
    return _fast_var(rows.sum(axis=1, dtype=F32), (rows * rows).sum(axis=1, dtype=F32),
                     rows.shape[1])


def stats_two_pass(rows):
    mean = rows.sum(axis=1, dtype=F32) / F32(rows.shape[1])
    d = rows - mean[:, None]
    return mean, (d * d).sum(axis=1, dtype=F32) / F32(rows.shape[1])


def _sequential_sum(a):
    """Left-to-right float32 sums along the last axis (``cumsum`` is sequential)."""
    return np.cumsum(a, axis=-1, dtype=F32)[..., -1] if a.shape[-1] else a.sum(-1)


def _blocks(rows, block):
    c, n = rows.shape
    nb = -(-n // block)
    padded = np.zeros((c, nb * block), F32)
    padded[:, :n] = rows
    return padded.reshape(c, nb, block)


def stats_blocked(rows, block: int = 256):
    """Sequential sums inside blocks of 256, then sequential over the block sums."""
    bl = _blocks(rows, block)
    return _fast_var(_sequential_sum(_sequential_sum(bl)),
                     _sequential_sum(_sequential_sum(bl * bl)), rows.shape[1])


def stats_sequential(rows):
    """One running float32 sum per channel over all N*H*W values (a plain C loop)."""
    return _fast_var(_sequential_sum(rows), _sequential_sum(rows * rows), rows.shape[1])


def _welford_lanes(rows, lanes: int):
    """Welford's update run sequentially in each of ``lanes`` contiguous chunks."""
    c, n = rows.shape
    lanes = max(1, min(lanes, n))
    chunk = -(-n // lanes)
    padded = np.full((c, lanes * chunk), np.nan, F32)
    padded[:, :n] = rows
    data = padded.reshape(c, lanes, chunk)
    count = np.zeros((c, lanes), F32)
    mean = np.zeros((c, lanes), F32)
    m2 = np.zeros((c, lanes), F32)
    for t in range(chunk):
        v = data[:, :, t]
        ok = ~np.isnan(v)
        cnt = count + ok.astype(F32)
        delta = np.where(ok, v - mean, F32(0))
        mean = mean + np.where(ok, delta / np.maximum(cnt, F32(1)), F32(0))
        m2 = m2 + np.where(ok, delta * (np.where(ok, v, F32(0)) - mean), F32(0))
        count = cnt
    return count, mean, m2


def _chan_combine(count, mean, m2):
    """Pairwise tree of Chan, Golub and LeVeque's merge over the lane axis."""
    while count.shape[1] > 1:
        if count.shape[1] % 2:
            z = np.zeros((count.shape[0], 1), F32)
            count, mean, m2 = (np.concatenate([a, z], axis=1) for a in (count, mean, m2))
        na, nb = count[:, 0::2], count[:, 1::2]
        ma, mb = mean[:, 0::2], mean[:, 1::2]
        nab = na + nb
        safe = np.maximum(nab, F32(1))
        delta = mb - ma
        mean = ma + delta * (nb / safe)
        m2 = m2[:, 0::2] + m2[:, 1::2] + delta * delta * (na * nb / safe)
        count = nab
    return count[:, 0], mean[:, 0], m2[:, 0]


def stats_welford_chunked(rows, lanes: int = 256):
    """Parallel Welford: sequential in 256 chunks, merged pairwise (Chan et al.)."""
    count, mean, m2 = _chan_combine(*_welford_lanes(rows, lanes))
    return mean, m2 / count


def stats_welford_sequential(rows):
    """Welford's running update over all N*H*W values of a channel, one after another."""
    count, mean, m2 = _welford_lanes(rows, 1)
    return mean[:, 0], m2[:, 0] / count[:, 0]


def _kahan_lanes(a, lanes: int = 64):
    """Kahan-compensated sums in ``lanes`` strided lanes, then over the lanes."""
    c, n = a.shape
    chunk = -(-n // lanes)
    padded = np.zeros((c, lanes * chunk), F32)
    padded[:, :n] = a
    data = padded.reshape(c, chunk, lanes)
    s = np.zeros((c, lanes), F32)
    comp = np.zeros((c, lanes), F32)
    for t in range(chunk):
        yv = data[:, t, :] - comp
        tv = s + yv
        comp = (tv - s) - yv
        s = tv
    total = np.zeros(c, F32)
    comp2 = np.zeros(c, F32)
    for j in range(lanes):
        yv = (s[:, j] - comp[:, j]) - comp2
        tv = total + yv
        comp2 = (tv - total) - yv
        total = tv
    return total


def stats_kahan(rows):
    """Single-pass formula with Kahan-compensated sums."""
    return _fast_var(_kahan_lanes(rows), _kahan_lanes(rows * rows), rows.shape[1])


def stats_float64(rows):
    """Two passes with float64 accumulators (the C example's choice), rounded to float32."""
    r = rows.astype(np.float64)
    mean = r.mean(axis=1)
    return mean.astype(F32), np.square(r - mean[:, None]).mean(axis=1).astype(F32)


STATS = {
    "pairwise": stats_pairwise,
    "two_pass": stats_two_pass,
    "blocked": stats_blocked,
    "welford_chunked": stats_welford_chunked,
    "kahan": stats_kahan,
    "float64": stats_float64,
    "sequential": stats_sequential,
    "welford_sequential": stats_welford_sequential,
}

NORMS = ("subtract_first", "folded", "fused")


def _bn(alg: Algorithm, c, scale, beta, mean_in, var_in, relu: bool):
    rows = np.ascontiguousarray(c.reshape(-1, c.shape[-1]).T)
    mean, var = STATS[alg.stats](rows)
    mean, var = mean.astype(F32), var.astype(F32)
    inv = scale / np.sqrt(var + F32(EPSILON))
    if alg.norm == "subtract_first":
        z = (c - mean) * inv + beta
    else:  # folded (and fused: the same arithmetic, with the ReLU in the same pass)
        z = c * inv + (beta - mean * inv)
    if relu:
        z = np.maximum(z, F32(0))
    if alg.norm == "fused":  # lerp form of the running update
        new_mean = mean_in + F32(1 - MOMENTUM) * (mean - mean_in)
        new_var = var_in + F32(1 - MOMENTUM) * (var - var_in)
    else:
        new_mean = F32(MOMENTUM) * mean_in + F32(1 - MOMENTUM) * mean
        new_var = F32(MOMENTUM) * var_in + F32(1 - MOMENTUM) * var
    return z.astype(F32), {"mean": new_mean.astype(F32), "var": new_var.astype(F32)}


def make_forward(alg: Algorithm | str):
    """``forward(x, params, batch_stats) -> (y, new_batch_stats)`` of a zoo row, NHWC."""
    if isinstance(alg, str):
        alg = ZOO_BY_NAME[alg]
    conv = CONVS[alg.conv]

    def forward(x, params, batch_stats):
        a = lambda t: np.asarray(t, F32)  # noqa: E731
        x = a(x)
        h = x
        new = {}
        for i, (cv, bn) in enumerate((("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1"))):
            c = conv(h, a(params[cv]["kernel"]), a(params[cv]["bias"])).astype(F32)
            h, new[bn] = _bn(alg, c, a(params[bn]["scale"]), a(params[bn]["bias"]),
                             a(batch_stats[bn]["mean"]), a(batch_stats[bn]["var"]),
                             relu=i == 0)
        return np.maximum(h + x, F32(0)), new

    forward.__name__ = f"zoo_{alg.name}"
    return forward


ZOO: tuple[Algorithm, ...] = (
    Algorithm("direct-pairwise", "direct", "pairwise", "subtract_first",
              "Flax's formulas; nine shifted GEMMs"),
    Algorithm("im2col-two_pass-folded", "im2col", "two_pass", "folded",
              "one GEMM; two-pass variance; folded normalisation (Keras, ONNX Runtime)"),
    Algorithm("fft-pairwise-folded", "fft", "pairwise", "folded",
              "FFT convolution: rounding spread over the whole plane"),
    Algorithm("winograd2-pairwise", "winograd2", "pairwise", "subtract_first",
              "Winograd F(2x2,3x3) (cuDNN, oneDNN)"),
    Algorithm("winograd4-two_pass-folded", "winograd4", "two_pass", "folded",
              "Winograd F(4x4,3x3)"),
    Algorithm("direct-blocked-folded", "direct", "blocked", "folded",
              "blocked sums: sequential inside blocks of 256"),
    Algorithm("im2col-welford_chunked", "im2col", "welford_chunked", "subtract_first",
              "parallel Welford (256 chunks merged by Chan's formula)"),
    Algorithm("direct-kahan-folded", "direct", "kahan", "folded",
              "Kahan-compensated sums"),
    Algorithm("im2col-blocked-fused", "im2col", "blocked", "fused",
              "fused conv+BN+ReLU order: blocked stats, folded affine+ReLU in one pass, "
              "lerp running update"),
    Algorithm("direct-float64", "direct", "float64", "folded",
              "float64 accumulators for the statistics (the C example)"),
    Algorithm("winograd6-pairwise", "winograd6", "pairwise", "subtract_first",
              "Winograd F(6x6,3x3): large transform constants", expect="measured"),
    Algorithm("direct-sequential", "direct", "sequential", "subtract_first",
              "one running float32 sum per channel", expect="envelope"),
    Algorithm("direct-welford_sequential", "direct", "welford_sequential", "subtract_first",
              "Welford's running update over all values", expect="envelope"),
)
ZOO_BY_NAME = {a.name: a for a in ZOO}
if len(ZOO_BY_NAME) != len(ZOO):
    raise ValueError("duplicate names in the zoo table")
