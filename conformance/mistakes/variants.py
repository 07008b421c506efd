"""One configurable NumPy implementation of the basic block, correct or wrong on purpose.

A :class:`Variant` is a row of switches; :func:`make_forward` turns it into a callable
with the kit's functional contract ``forward(x, params, batch_stats) -> (y,
new_batch_stats)`` (NHWC, HWIO kernels, NumPy float32 in and out). ``Variant()`` is the
correct block in float32 with Flax's single-pass clipped variance. Each wrong switch
reproduces one porting mistake from :mod:`resblock.conformance.mistakes.pitfalls`; the kit runs
them to prove its checker catches each one (a checker that passes a wrong variant is
itself broken), and a user can compare a failing implementation with them.

The module is independent of JAX: it is a NumPy twin of ``resblock.spec.reference``.

Degenerate shapes: all switches run on 1x1 spatial inputs, batch 1 and one feature.
When a channel holds one value (N*H*W == 1) the biased batch variance is 0 and the
correct block normalises to the BN bias. PyTorch's ``BatchNorm2d`` raises in that case
("Expected more than 1 value per channel when training"); the two switches that mimic
its unbiased variance (``unbiased_variance_norm``, ``torch_unbiased_running_var``)
instead divide 0 by 0 and return NaN, which the runner reports as non-finite output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

EPSILON = 1e-5
MOMENTUM = 0.99  # Flax convention: weight of the OLD running value.

Arrays = dict[str, dict[str, np.ndarray]]
Forward = Callable[[np.ndarray, Mapping, Mapping], tuple[np.ndarray, Arrays]]


@dataclasses.dataclass(frozen=True)
class Variant:
    """Switches of the NumPy block. All wrong switches off is the correct block.

    Attributes:
      dtype: compute dtype, "float32" or "float64" (default: "float32"). Results are
        returned as float32 unless ``make_forward(..., keep_dtype=True)``.
      two_pass_variance: ``mean((y - mean)**2)`` instead of Flax's single-pass
        ``max(mean(y**2) - mean**2, 0)`` (default: False). Both conform.

    Every other attribute is a wrong switch named after its pitfall (default: False);
    see :mod:`resblock.conformance.mistakes.pitfalls` for what each one reproduces.
    """

    dtype: str = "float32"
    two_pass_variance: bool = False
    # Block structure.
    missing_residual: bool = False
    relu_before_add: bool = False
    preactivation: bool = False
    # BatchNorm.
    eval_mode_bn: bool = False
    unbiased_variance_norm: bool = False
    torch_unbiased_running_var: bool = False
    momentum_swapped: bool = False
    torch_default_momentum: bool = False
    stale_stats: bool = False
    epsilon_1e3: bool = False
    epsilon_1e4: bool = False
    epsilon_1e6: bool = False
    momentum_0999: bool = False
    momentum_095: bool = False
    sequential_f32_stats: bool = False
    epsilon_outside_sqrt: bool = False
    per_sample_stats: bool = False
    # Convolution.
    valid_padding: bool = False
    circular_padding: bool = False
    reflect_padding: bool = False
    kernel_flipped: bool = False
    kernel_hw_swapped: bool = False
    kernel_io_swapped: bool = False
    kernel_reshaped: bool = False
    missing_conv_bias: bool = False
    tf32_conv: bool = False
    bf16_conv: bool = False
    # Seeded initialisation: kernels drawn from the right key at the wrong scale.
    init_no_truncation_correction: bool = False
    init_he_scale: bool = False
    init_fan_in_c: bool = False
    # Precision of the activations.
    float16_activations: bool = False
    # The whole block stored in a low type, accumulated in float32 (autocast, the
    # engines' float16 modes): wrong under fp32, correct under the fp16 / bf16 profiles.
    float16_block: bool = False
    bfloat16_block: bool = False
    # Memory layout.
    layout_confusion: bool = False
    # Library defaults (examples/recipes/ shows each library set up right).
    equinox_ema_mode: bool = False
    haiku_zero_debias: bool = False
    biased_running_var_converted: bool = False
    whole_running_var_converted: bool = False
    torch_one_value_per_channel: bool = False

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        exclusive = [
            ("valid_padding", "circular_padding", "reflect_padding"),
            ("tf32_conv", "bf16_conv", "float16_block", "bfloat16_block"),
            ("momentum_swapped", "torch_default_momentum", "stale_stats"),
            ("relu_before_add", "missing_residual", "preactivation"),
        ]
        for group in exclusive:
            on = [name for name in group if getattr(self, name)]
            if len(on) > 1:
                raise ValueError(f"switches {on} are mutually exclusive")

    def wrong_switches(self) -> tuple[str, ...]:
        """Names of the wrong switches that are on (empty for a correct variant)."""
        return tuple(name for name in WRONG_SWITCHES if getattr(self, name))

    @property
    def is_correct(self) -> bool:
        return not self.wrong_switches()


WRONG_SWITCHES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Variant) if f.name not in ("dtype", "two_pass_variance")
)

CORRECT_VARIANTS: dict[str, Variant] = {
    "correct_float32": Variant(),
    "correct_float64": Variant(dtype="float64"),
    "correct_two_pass": Variant(two_pass_variance=True),
}

VARIANTS: dict[str, Variant] = {
    **CORRECT_VARIANTS,
    **{name: Variant(**{name: True}) for name in WRONG_SWITCHES},
}


def make_forward(variant: Variant | str, *, keep_dtype: bool = False) -> Forward:
    """The ``forward(x, params, batch_stats)`` callable of ``variant`` (or its name).

    Args:
      variant: a :class:`Variant` or a key of :data:`VARIANTS`.
      keep_dtype: return arrays in the compute dtype instead of float32 (default: False);
        useful for a float64 NumPy cross-check of goldens.
    """
    if isinstance(variant, str):
        try:
            variant = VARIANTS[variant]
        except KeyError:
            raise KeyError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}") from None
    v = variant

    def forward(x, params, batch_stats):
        dt = np.dtype(v.dtype)
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D NHWC, got shape {x.shape}")
        p = _cast_tree(params, dt)
        s = _cast_tree(batch_stats, dt)
        features = p["Conv_0"]["kernel"].shape[-1]
        if x.shape[-1] != features:
            raise ValueError(f"x has C={x.shape[-1]} channels but the kernels have F={features}")
        x = x.astype(dt)
        if v.layout_confusion:
            y, new_stats = _layout_confused(v, x, p, s)
        else:
            y, new_stats = _block(v, x, p, s)
        out_dt = dt if keep_dtype else np.float32
        return y.astype(out_dt), _cast_tree(new_stats, out_dt)

    forward.variant = v
    return forward


# --- the block ------------------------------------------------------------------------


def _block(v: Variant, x, p, s):
    if v.float16_block or v.bfloat16_block:
        return _low_block(v, x, p, s)
    if v.preactivation:
        # Pre-activation ResNet (He et al. 2016b): BN -> ReLU -> conv, twice, then + x,
        # with no final ReLU. BatchNorm_0 normalises x, BatchNorm_1 the first conv.
        h, m0 = _batch_norm(v, x, p["BatchNorm_0"], s["BatchNorm_0"])
        h = _conv(v, _relu(h), p["Conv_0"])
        h, m1 = _batch_norm(v, h, p["BatchNorm_1"], s["BatchNorm_1"])
        h = _conv(v, _relu(h), p["Conv_1"])
        return h + x, {"BatchNorm_0": m0, "BatchNorm_1": m1}
    q = _quantise if v.float16_activations else (lambda a: a)
    h = q(_conv(v, x, p["Conv_0"]))
    h, m0 = _batch_norm(v, h, p["BatchNorm_0"], s["BatchNorm_0"])
    h = q(_relu(q(h)))
    h = q(_conv(v, h, p["Conv_1"]))
    h, m1 = _batch_norm(v, h, p["BatchNorm_1"], s["BatchNorm_1"])
    h = q(h)
    if v.missing_residual:
        pass
    elif v.relu_before_add:
        h = _relu(h) + x
    else:
        h = h + x
    return _relu(h), {"BatchNorm_0": m0, "BatchNorm_1": m1}


def _low_block(v: Variant, x, p, s):
    """The block with every stored value in float16 (bfloat16), every sum in float32, as
    ``torch.autocast`` or an engine's half-precision mode computes it: x, the parameters
    and the running statistics are cast to the low type; each convolution multiplies
    low-type operands and accumulates in float32, its output is stored low; BatchNorm
    computes its statistics in float32 from the stored input and stores them low, then
    normalises in float32 with the stored statistics and parameters and stores the
    result; the residual sum, the output and the new running statistics are stored low.
    Results are returned as float32 (every value is exactly representable)."""
    low = _to_float16 if v.float16_block else _to_bfloat16
    f32 = np.float32
    x = low(x.astype(f32))
    p = {k: {kk: low(a.astype(f32)) for kk, a in d.items()} for k, d in p.items()}
    s = {k: {kk: low(a.astype(f32)) for kk, a in d.items()} for k, d in s.items()}
    plain = Variant()

    def bn(h, layer):
        rows = np.ascontiguousarray(h.reshape(-1, h.shape[-1]).T)
        mean, var = _moments(plain, rows)  # float32 sums of stored values
        mean, var = low(mean), low(var)
        inv = low(p[layer]["scale"] / np.sqrt(var + f32(EPSILON)))
        out = low((h - mean) * inv + p[layer]["bias"])
        m = f32(MOMENTUM)
        new = {"mean": low(m * s[layer]["mean"] + f32(1.0 - MOMENTUM) * mean),
               "var": low(m * s[layer]["var"] + f32(1.0 - MOMENTUM) * var)}
        return out, new

    h = low(_conv(plain, x, p["Conv_0"]))
    h, m0 = bn(h, "BatchNorm_0")
    h = _relu(h)
    h = low(_conv(plain, h, p["Conv_1"]))
    h, m1 = bn(h, "BatchNorm_1")
    y = _relu(low(h + x))
    return y, {"BatchNorm_0": m0, "BatchNorm_1": m1}


def _to_float16(a):
    """Round to float16 (round to nearest even; beyond 65504: inf) and back to float32."""
    with np.errstate(over="ignore"):
        return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _to_bfloat16(a):
    """Round to bfloat16 (round to nearest even, float32's range) as float32."""
    return _round_mantissa(np.asarray(a, np.float32), 16)


def _layout_confused(v: Variant, x, p, s):
    """The NHWC buffer read as NCHW, e.g. a raw pointer handed to an NCHW kernel.

    The (N, H, W, C) array's memory is reinterpreted (a reshape, not a transpose) as
    (N, C, H, W), the block runs correctly on that misread tensor, and the NCHW result's
    memory is reinterpreted back as (N, H, W, C). Shapes always fit, so nothing crashes.
    Invisible when C == 1 or H*W == 1: both orders are then the same memory order.
    """
    n, h, w, c = x.shape
    misread = x.reshape(n, c, h, w).transpose(0, 2, 3, 1)
    y, stats = _block(dataclasses.replace(v, layout_confusion=False), misread, p, s)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)).reshape(n, h, w, c), stats


def _relu(a):
    return np.maximum(a, 0)


def _quantise(a):
    """Round activations to float16 and back (a port storing activations in half)."""
    with np.errstate(over="ignore"):
        return a.astype(np.float16).astype(a.dtype)


# Kernel scale of each init mistake relative to Flax's lecun_normal: the truncated
# normal is drawn from the same key, only its standard deviation differs.
_INIT_SCALE = {
    "init_no_truncation_correction": 0.87962566103423978,  # std sqrt(1/fan_in), no /0.8796
    "init_he_scale": 2.0 ** 0.5,  # He: sqrt(2/fan_in)
    "init_fan_in_c": 3.0,  # fan_in = C instead of 9*C
}


# --- convolution ----------------------------------------------------------------------


def _conv(v: Variant, x, conv):
    """3x3 stride-1 cross-correlation as 9 shifted matmuls, then + bias."""
    k = _wrong_kernel(v, conv["kernel"])
    if v.tf32_conv or v.bf16_conv:
        drop = 13 if v.tf32_conv else 16  # float32 has 23 mantissa bits; TF32 10, bf16 7.
        x, k = _round_mantissa(x, drop), _round_mantissa(k, drop)
    n, h, w, _ = x.shape
    if v.valid_padding:
        # A port that forgot the padding (PyTorch's Conv2d defaults to padding=0) and
        # zero-pads the (H-2, W-2) result back to (H, W) so that the residual add fits.
        hv, wv = max(h - 2, 0), max(w - 2, 0)
        y = _shifted_matmuls(x, k, hv, wv)
        top, left = (h - hv) // 2, (w - wv) // 2
        y = np.pad(y, ((0, 0), (top, h - hv - top), (left, w - wv - left), (0, 0)))
    else:
        mode = "wrap" if v.circular_padding else "reflect" if v.reflect_padding else \
            "constant"
        y = _shifted_matmuls(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode), k, h, w)
    if not v.missing_conv_bias:
        y = y + conv["bias"]
    return y


def _shifted_matmuls(xp, k, h, w):
    y = np.zeros(xp.shape[:1] + (h, w, k.shape[-1]), dtype=xp.dtype)
    if h == 0 or w == 0:
        return y
    for i in range(3):
        for j in range(3):
            y += xp[:, i : i + h, j : j + w, :] @ k[i, j]
    return y


def _wrong_kernel(v: Variant, k):
    for name, scale in _INIT_SCALE.items():
        if getattr(v, name):
            k = k * np.asarray(scale, k.dtype)
    if v.kernel_flipped:  # true convolution: the kernel rotated by 180 degrees
        k = k[::-1, ::-1]
    if v.kernel_hw_swapped:
        k = k.transpose(1, 0, 2, 3)
    if v.kernel_io_swapped:
        k = k.transpose(0, 1, 3, 2)
    if v.kernel_reshaped:
        # HWIO -> OIHW done with reshape instead of transpose(3, 2, 0, 1); shown here in
        # HWIO again so the rest of the block is unchanged.
        hh, ww, c, f = k.shape
        k = k.reshape(f, c, hh, ww).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(k)


def _round_mantissa(a, drop_bits: int):
    """Round float values to float32 with ``drop_bits`` low mantissa bits cleared.

    Round to nearest, ties to even, as cuDNN/cuBLAS do for TF32 and bf16 operands;
    inf and NaN pass through. The result is returned in ``a``'s dtype.
    """
    f32 = np.asarray(a, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    half = np.uint64((1 << (drop_bits - 1)) - 1)
    lsb = (bits >> np.uint64(drop_bits)) & np.uint64(1)
    mask = np.uint64((0xFFFFFFFF >> drop_bits) << drop_bits)
    rounded = ((bits + half + lsb) & mask).astype(np.uint32).view(np.float32)
    rounded = np.where(np.isfinite(f32), rounded, f32)
    return rounded.astype(np.asarray(a).dtype)


# --- batch normalisation --------------------------------------------------------------


def _batch_norm(v: Variant, y, bn, stats):
    """Training-mode BN of NHWC ``y``; returns ``(normalised, new_stats)``."""
    dt = y.dtype
    c = y.shape[-1]
    if v.per_sample_stats:
        # Instance-norm statistics: per sample over H, W; running stats get the average
        # of the per-sample statistics, as InstanceNorm2d(track_running_stats=True) does.
        cols = y.reshape(y.shape[0], -1, c)
        mean, var = _moments(v, cols.transpose(0, 2, 1))  # (N, C) each
        n = cols.shape[1]
        norm_mean, norm_var = mean[:, None, None, :], var[:, None, None, :]
        batch_mean, batch_var = mean.mean(axis=0), var.mean(axis=0)
    else:
        cols = y.reshape(-1, c)
        batch_mean, batch_var = _moments(v, cols.T)
        n = cols.shape[0]
        norm_mean, norm_var = batch_mean, batch_var
    unbiased = np.asarray(n, dt) / np.asarray(n - 1, dt) if n > 1 else np.asarray(np.inf, dt)
    if v.unbiased_variance_norm:
        with np.errstate(invalid="ignore"):  # n == 1: 0 * inf = NaN, see module docstring
            norm_var = norm_var * unbiased
    if v.eval_mode_bn:  # PyTorch model.eval(): running averages, stats left unchanged
        norm_mean, norm_var = stats["mean"], stats["var"]
    if v.torch_one_value_per_channel and n == 1:
        # nn.BatchNorm2d / F.batch_norm(training=True) refuse it; the message is PyTorch's.
        nchw = (y.shape[0], c) + y.shape[1:3]
        raise ValueError("Expected more than 1 value per channel when training, got input "
                         f"size torch.Size({list(nchw)})")
    eps = np.asarray(1e-3 if v.epsilon_1e3 else 1e-4 if v.epsilon_1e4
                     else 1e-6 if v.epsilon_1e6 else EPSILON, dt)
    if v.epsilon_outside_sqrt:
        mul = bn["scale"] / (np.sqrt(norm_var) + eps)
    else:
        mul = bn["scale"] / np.sqrt(norm_var + eps)
    out = (y - norm_mean) * mul + bn["bias"]

    if v.stale_stats or v.eval_mode_bn:
        return out, {"mean": stats["mean"].copy(), "var": stats["var"].copy()}
    keep = (0.01 if v.momentum_swapped else 0.9 if v.torch_default_momentum
            else 0.999 if v.momentum_0999 else 0.95 if v.momentum_095 else MOMENTUM)
    stat_var = batch_var
    if v.torch_unbiased_running_var:
        with np.errstate(invalid="ignore"):
            stat_var = batch_var * unbiased
    if v.biased_running_var_converted:  # PyTorch's (n-1)/n applied to a biased variance
        stat_var = batch_var * (np.asarray(n - 1, dt) / np.asarray(n, dt))
    keep, take = np.asarray(keep, dt), np.asarray(1.0 - keep, dt)
    new = {
        "mean": keep * stats["mean"] + take * batch_mean,
        "var": keep * stats["var"] + take * stat_var,
    }
    if v.whole_running_var_converted:
        # PyTorch's update (unbiased batch term) with the WHOLE result scaled by (n-1)/n:
        # the carried-over 0.99 * old is shrunk too, not only the batch term.
        with np.errstate(invalid="ignore"):
            whole = keep * stats["var"] + take * batch_var * unbiased
        new["var"] = whole * (np.asarray(n - 1, dt) / np.asarray(n, dt))
    if v.equinox_ema_mode:
        # eqx.nn.BatchNorm(mode="ema"), Equinox's default, on a fresh state's first call
        # (every call of a functional forward builds one): it normalises with the batch
        # statistics, as the spec does, but stores them as the running averages, dropping
        # the incoming ones (``lax.select(first_time, batch, ema)``).
        new = {"mean": batch_mean.copy(), "var": batch_var.copy()}
    if v.haiku_zero_debias:
        # hk.ExponentialMovingAverage after one step from counter 0: hidden / (1 - decay).
        new = {k: a / (1 - keep) for k, a in new.items()}
    return out, new


def _moments(v: Variant, rows):
    """Mean and biased variance over the last axis (contiguous, so NumPy sums pairwise)."""
    rows = np.ascontiguousarray(rows)
    if v.sequential_f32_stats:
        # One running float32 sum per channel (a plain C loop; cumsum is sequential).
        n = rows.shape[-1]
        s1 = np.cumsum(rows, axis=-1, dtype=rows.dtype)[..., -1]
        s2 = np.cumsum(rows * rows, axis=-1, dtype=rows.dtype)[..., -1]
        mean = s1 / np.asarray(n, rows.dtype)
        return mean, np.maximum(s2 / np.asarray(n, rows.dtype) - mean * mean, 0)
    mean = rows.mean(axis=-1)
    if v.two_pass_variance:
        var = np.square(rows - mean[..., None]).mean(axis=-1)
    else:
        # Flax's fast variance: one pass, clipped because round-off can make it negative.
        var = np.maximum(np.square(rows).mean(axis=-1) - np.square(mean), 0)
    return mean, var


def _cast_tree(tree, dt):
    return {
        k: _cast_tree(a, dt) if isinstance(a, Mapping) else np.asarray(a, dt)
        for k, a in tree.items()
    }
