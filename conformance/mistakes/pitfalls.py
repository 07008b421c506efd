"""The porting mistakes the kit knows, one row each, with what to do about them: the
:class:`Pitfall` record, the ``PITFALLS`` table, and finding a row (:func:`lookup` by name,
forward rows then the backward ones of
:mod:`resblock.conformance.mistakes.variants_backward`; :func:`names` in table order;
:func:`applies` to a case). Each row names the wrong switch of
:mod:`resblock.conformance.mistakes.variants` that reproduces it, so the kit can show that
its checker catches the mistake and a user can compare a failing implementation with the
matching variant. A row is checked when it is built, and building the index refuses
duplicate names.

``stage`` is the first intermediate of the spec's block where the mistake changes a value:
conv1, bn1, relu1, conv2, bn2, sum (bn2 + x), output (final ReLU) or batch_stats
(``STAGES``). ``affects`` lists which of the contract's results ("output", "batch_stats";
``RESULTS``) it can change; a mistake can change an intermediate and still leave the
output intact (a conv bias is removed again by the training-mode BatchNorm after it), and
one that changes the output changes BatchNorm_1's statistics too.
"""

from __future__ import annotations

import dataclasses
import difflib

from resblock.spec.cases import FAMILIES

STAGES = ("conv1", "bn1", "relu1", "conv2", "bn2", "sum", "output", "batch_stats")
RESULTS = ("output", "batch_stats")


@dataclasses.dataclass(frozen=True)
class Pitfall:
    """One known mistake.

    Attributes:
      name: key of the pitfall, equal to its wrong switch in ``variants``.
      title: a few words for a report line.
      explanation: what the implementation does differently, and where it comes from.
      fix: the change that makes it conform.
      variant: key of ``variants.VARIANTS`` that reproduces it.
      stage: first stage whose value diverges (one of :data:`STAGES`).
      affects: results of the contract that differ (default: both).
      families: case families where the mistake can happen (default: all); an init
        mistake exists only where the implementation initialises (``seeded``).
      min_values: fewest values per channel (N*H*W) at which the mistake can leave the
        error model's envelope (default 1); below it the mistake is a correct float32
        algorithm and the checker must accept it.
      max_values: most values per channel at which the mistake can show (default None:
        no limit); above it the mistaken port computes what a correct one does (a
        library that refuses one value per channel is correct at two).
      match_profile: tolerance profile under which a result is compared with the twin
        when naming it (default "fp32"); a rounding mistake (TF32, bf16) is reproduced
        by its twin only to within that format's own rounding.
      backward_fix: the fix as a port of the backward (``--api backward``) needs it,
        where it differs from ``fix`` (default: None, the same).
    """

    name: str
    title: str
    explanation: str
    fix: str
    variant: str
    stage: str
    affects: tuple[str, ...] = RESULTS
    families: tuple[str, ...] = ("seeded", "functional", "stress")
    min_values: int = 1
    max_values: int | None = None
    match_profile: str = "fp32"
    backward_fix: str | None = None

    def fix_for(self, api: str) -> str:
        """The fix text for a check of ``api`` ("functional", "seeded", "backward",
        "inference")."""
        return self.backward_fix if api == "backward" and self.backward_fix else self.fix

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"pitfall {self.name}: stage {self.stage!r} not in {STAGES}")
        if not self.affects or not set(self.affects) <= set(RESULTS):
            raise ValueError(f"pitfall {self.name}: affects {self.affects!r} not within {RESULTS}")


# --- the table -------------------------------------------------------------------------


def _row(name, title, explanation, fix, stage, affects=RESULTS, **kw):
    return Pitfall(name, title, explanation, fix, name, stage, affects, **kw)


_STATS = ("batch_stats",)

PITFALLS: tuple[Pitfall, ...] = (
    _row(
        "missing_residual",
        "residual connection missing",
        "The block returns relu(bn2(conv2(...))) without adding the input x back.",
        "Add the block input to the second BatchNorm's output before the final ReLU.",
        "sum",
    ),
    _row(
        "relu_before_add",
        "ReLU applied before the residual add",
        "bn2 output goes through a ReLU, then x is added, then a final ReLU: negative bn2 "
        "values are clipped before they can cancel part of x.",
        "Compute relu(bn2(...) + x); there is no ReLU between BatchNorm_1 and the add.",
        "sum",
    ),
    _row(
        "preactivation",
        "pre-activation block ordering",
        "The block is the 'v2' ResNet (BN -> ReLU -> conv, twice, then + x, no final ReLU); "
        "the spec is the original post-activation block.",
        "Use conv -> BN -> ReLU -> conv -> BN -> (+ x) -> ReLU; BatchNorm_0 normalises "
        "the first conv's output, not x.",
        "conv1",
    ),
    _row(
        "eval_mode_bn",
        "BatchNorm in inference mode",
        "BatchNorm normalises with the incoming running mean/var and leaves them unchanged, "
        "as PyTorch does after model.eval() or Flax with use_running_average=True.",
        "Run BatchNorm in training mode: normalise with this batch's statistics and update "
        "the running averages (model.train() in PyTorch). A port meant for inference "
        "(deployment) is checked with `resblock check --api inference` instead.",
        "bn1",
    ),
    _row(
        "unbiased_variance_norm",
        "normalising with the unbiased variance",
        "The batch variance used to normalise is divided by n-1 instead of n (n = N*H*W), "
        "e.g. torch.var's default unbiased=True; with n == 1 this gives NaN.",
        "Normalise with the biased variance mean((y - mean)**2), e.g. "
        "torch.var(y, dim=(0, 2, 3), unbiased=False).",
        "bn1",
    ),
    _row(
        "torch_unbiased_running_var",
        "running_var updated with the unbiased variance",
        "PyTorch's BatchNorm2d updates running_var with the unbiased batch variance; the "
        "spec uses the biased one. The gap is 0.01*var/(n-1), so it hides on large batches.",
        "Store var_biased = var_unbiased*(n-1)/n in the update: new_var = 0.99*old_var + "
        "0.01*var_biased (with nn.BatchNorm2d: resblock.conformance.convert."
        "spec_running_var(old_var, bn.running_var, n)); convert the batch term, not the "
        "whole running_var.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "momentum_swapped",
        "momentum applied to the batch statistic",
        "Running stats are updated as 0.01*old + 0.99*batch: Flax's momentum=0.99 weighs the "
        "OLD value, PyTorch's momentum weighs the NEW one (opposite conventions).",
        "Use new = 0.99*old + 0.01*batch; in PyTorch that is BatchNorm2d(momentum=0.01).",
        "batch_stats",
        _STATS,
    ),
    _row(
        "torch_default_momentum",
        "PyTorch's default momentum 0.1",
        "Running stats are updated as 0.9*old + 0.1*batch, the default of BatchNorm2d "
        "(momentum=0.1 weighs the new value); the spec keeps 0.99 of the old value.",
        "Pass momentum=0.01 to BatchNorm2d (PyTorch convention), i.e. new = 0.99*old + 0.01*batch.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "stale_stats",
        "batch_stats returned unchanged",
        "The forward pass returns the incoming running mean/var instead of the updated "
        "ones (e.g. Flax apply without mutable=['batch_stats'], or a copy returned too early).",
        "Return the updated running statistics: 0.99*old + 0.01*batch for mean and biased var.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "epsilon_1e3",
        "BatchNorm epsilon 1e-3",
        "BatchNorm uses eps=1e-3 (the Keras/TensorFlow default) instead of Flax's and "
        "PyTorch's 1e-5; visible on channels whose variance is not large against 1e-3.",
        "Use eps=1e-5 inside the square root: (y - mean) / sqrt(var + 1e-5).",
        "bn1",
    ),
    _row(
        "epsilon_outside_sqrt",
        "epsilon added outside the square root",
        "BatchNorm divides by sqrt(var) + eps instead of sqrt(var + eps); the outputs differ "
        "by about 1e-5/sqrt(var) relative, so only small-variance channels reveal it.",
        "Divide by sqrt(var + 1e-5) (or multiply by rsqrt(var + 1e-5)).",
        "bn1",
    ),
    _row(
        "per_sample_stats",
        "statistics per sample (instance norm)",
        "Mean and variance are taken over H, W of each sample separately instead of over "
        "N, H, W; identical when the batch has one sample.",
        "Reduce over the batch too: mean and var over axes (0, 1, 2) in NHWC, (0, 2, 3) in NCHW.",
        "bn1",
    ),
    _row(
        "valid_padding",
        "convolution without padding",
        "The conv uses VALID padding (PyTorch's Conv2d defaults to padding=0), giving an "
        "(H-2, W-2) map that is zero-padded back to (H, W) to fit the residual add.",
        "Zero-pad by 1 on each side before the 3x3 conv: padding='SAME' in Flax, padding=1 "
        "in PyTorch.",
        "conv1",
    ),
    _row(
        "circular_padding",
        "circular (wrap-around) padding",
        "The conv pads by wrapping the opposite edge (padding_mode='circular' or np.pad "
        "mode='wrap') instead of with zeros.",
        "Pad with zeros: padding_mode='zeros' in PyTorch, np.pad(..., mode='constant').",
        "conv1",
    ),
    _row(
        "reflect_padding",
        "reflect padding",
        "The conv pads by mirroring the rows and columns next to the edge "
        "(padding_mode='reflect' in PyTorch, np.pad mode='reflect', jnp.pad mode='reflect') "
        "instead of with zeros.",
        "Pad with zeros: padding_mode='zeros' (PyTorch's default) with padding=1, "
        "padding='SAME' in Flax and lax.conv, np.pad(..., mode='constant').",
        "conv1",
    ),
    _row(
        "kernel_flipped",
        "true convolution (flipped kernel)",
        "The kernel is rotated by 180 degrees (scipy.signal.convolve, a textbook convolution); "
        "deep-learning convs are cross-correlations. Invisible on 1x1 inputs.",
        "Use cross-correlation: y[h, w] = sum x[h+i-1, w+j-1] * k[i, j] (no flip), e.g. "
        "scipy.signal.correlate or lax.conv_general_dilated.",
        "conv1",
    ),
    _row(
        "kernel_hw_swapped",
        "kernel height and width swapped",
        "The kernel's spatial axes are transposed (k[j, i] used for k[i, j]), e.g. a wrong "
        "permutation when converting HWIO weights. Invisible on 1x1 inputs.",
        "Keep the kernel's axes as (H, W, in, out); to OIHW use transpose(3, 2, 0, 1).",
        "conv1",
    ),
    _row(
        "kernel_io_swapped",
        "kernel input and output channels swapped",
        "kernel[..., c_in, c_out] is used as [..., c_out, c_in]; it runs because C == F but "
        "mixes channels wrongly. Invisible with one feature.",
        "HWIO means (height, width, in, out): y[..., f] = sum_c x[..., c] * k[i, j, c, f].",
        "conv1",
    ),
    _row(
        "kernel_reshaped",
        "HWIO kernel reshaped instead of transposed",
        "The HWIO kernel was turned into OIHW with reshape(F, C, 3, 3), which reinterprets "
        "memory instead of moving axes. Invisible with one feature.",
        "Convert with w_oihw = k_hwio.transpose(3, 2, 0, 1) (torch: k.permute(3, 2, 0, 1)).",
        "conv1",
    ),
    _row(
        "missing_conv_bias",
        "convolution bias dropped",
        "The conv bias is left out (bias=False, as in torchvision's ResNet). Training-mode "
        "BN subtracts it again, so only the running mean differs, by 0.01*bias.",
        "Add the conv bias (Flax nn.Conv has use_bias=True); PyTorch: Conv2d(..., bias=True) "
        "with the bias loaded from params.",
        "conv1",
        _STATS,
    ),
    _row(
        "tf32_conv",
        "convolution in TF32",
        "Conv operands were rounded to TF32 (10 mantissa bits): "
        "torch.backends.cudnn.allow_tf32 defaults to True, and JAX's default precision "
        "uses TF32 on A100/H100 GPUs. Errors reach ~1e-3.",
        "Set torch.backends.cudnn.allow_tf32 = False (and cuda.matmul.allow_tf32 = False), "
        "or NVIDIA_TF32_OVERRIDE=0; in JAX use precision=lax.Precision.HIGHEST.",
        "conv1",
        match_profile="tf32-conv",
    ),
    _row(
        "bf16_conv",
        "convolution in bfloat16",
        "Conv operands were rounded to bfloat16 (7 mantissa bits), e.g. autocast/AMP or "
        "JAX's DEFAULT precision on TPU. Errors reach ~1e-2.",
        "Run the convs in float32: disable autocast, or use precision=lax.Precision.HIGHEST.",
        "conv1",
        match_profile="bf16-conv",
    ),
    _row(
        "layout_confusion",
        "NHWC data read as NCHW",
        "The (N, H, W, C) buffer was reinterpreted as (N, C, H, W) by a reshape (e.g. a raw "
        "pointer handed to an NCHW kernel). Invisible when C == 1 or H*W == 1.",
        "Convert layouts with a transpose: NHWC -> NCHW is x.transpose(0, 3, 1, 2); or run "
        "the check with --layout nchw.",
        "conv1",
    ),
    _row(
        "epsilon_1e4",
        "BatchNorm epsilon 1e-4",
        "BatchNorm uses eps=1e-4, ten times the spec's 1e-5; visible where a channel's "
        "variance is comparable to epsilon (low-amplitude inputs).",
        "Use eps=1e-5 inside the square root: (y - mean) / sqrt(var + 1e-5).",
        "bn1",
    ),
    _row(
        "epsilon_1e6",
        "BatchNorm epsilon 1e-6",
        "BatchNorm uses eps=1e-6, a tenth of the spec's 1e-5 (some TensorFlow and "
        "LayerNorm defaults); visible where a channel's variance is comparable to epsilon.",
        "Use eps=1e-5 inside the square root: (y - mean) / sqrt(var + 1e-5).",
        "bn1",
    ),
    _row(
        "momentum_0999",
        "running-average momentum 0.999",
        "The running statistics keep 0.999 of the old value instead of 0.99 (a common "
        "EMA default), so they move ten times too slowly.",
        "new = 0.99 * old + 0.01 * batch (PyTorch: BatchNorm2d(momentum=0.01)).",
        "batch_stats",
        _STATS,
    ),
    _row(
        "momentum_095",
        "running-average momentum 0.95",
        "The running statistics keep 0.95 of the old value instead of 0.99, so they move "
        "five times too fast.",
        "new = 0.99 * old + 0.01 * batch (PyTorch: BatchNorm2d(momentum=0.01)).",
        "batch_stats",
        _STATS,
    ),
    _row(
        "init_no_truncation_correction",
        "kernel init without the truncation correction",
        "The seeded kernels are drawn from the truncated normal with std sqrt(1/fan_in), "
        "without lecun_normal's division by 0.87962566 (the std of a standard normal "
        "truncated to [-2, 2]): every kernel is 0.88x too small. BatchNorm hides the scale "
        "except through epsilon, so only low-amplitude inputs show it.",
        "Use jax.nn.initializers.lecun_normal() (Flax's default): std = sqrt(1 / (9 C)) / "
        "0.87962566103423978, truncated at +-2 standard deviations.",
        "conv1",
        families=("seeded",),
    ),
    _row(
        "init_he_scale",
        "kernel init with He scale",
        "The seeded kernels use He (Kaiming) scaling, sqrt(2 / fan_in), instead of "
        "lecun_normal's sqrt(1 / fan_in): kernels 1.41x too large, visible through epsilon.",
        "Use lecun_normal (variance 1 / fan_in), Flax's nn.Conv default, not he_normal.",
        "conv1",
        families=("seeded",),
    ),
    _row(
        "init_fan_in_c",
        "kernel init with fan_in = C",
        "The seeded kernels use fan_in = C (input channels) instead of 9 C (channels times "
        "the 3x3 receptive field): kernels 3x too large, visible through epsilon.",
        "fan_in of an HWIO kernel is 3 * 3 * C; lecun_normal's std is sqrt(1 / (9 C)) / "
        "0.87962566103423978.",
        "conv1",
        families=("seeded",),
    ),
    _row(
        "float16_activations",
        "activations stored in float16",
        "Intermediate activations are rounded to float16 (10 mantissa bits, range 6.5e4) "
        "between stages, e.g. a half-precision buffer or autocast: errors ~1e-3 relative, "
        "and overflow for large inputs.",
        "Keep every activation in float32; disable autocast/half precision for the block.",
        "conv1",
    ),
    _row(
        "float16_block",
        "whole block stored in float16",
        "Inputs, parameters, activations and statistics are stored in float16 (10 mantissa "
        "bits, largest value 65504) with float32 accumulation: torch.autocast, "
        ".half() models, or an engine's float16 mode (TensorRT, ONNX Runtime, OpenVINO "
        "FP16). Errors ~1e-3 relative; a variance or activation beyond 65504 overflows.",
        "If float16 is intended, check under --profile fp16 (spec section 8.2); otherwise "
        "keep the block in float32 (disable autocast, load the model in float32).",
        "conv1",
        match_profile="fp16",
    ),
    _row(
        "bfloat16_block",
        "whole block stored in bfloat16",
        "Inputs, parameters, activations and statistics are stored in bfloat16 (7 mantissa "
        "bits, float32's range) with float32 accumulation: torch.autocast(dtype=bfloat16), "
        "bf16 mixed-precision training or a TPU/engine bfloat16 mode. Errors ~1e-2 relative.",
        "If bfloat16 is intended, check under --profile bf16 (spec section 8.2); otherwise "
        "keep the block in float32.",
        "conv1",
        match_profile="bf16",
    ),
    _row(
        "sequential_f32_stats",
        "statistics accumulated sequentially in float32",
        "The batch mean and variance sum all N*H*W values of a channel one after another "
        "into one float32 accumulator (a plain loop, or a sequential Welford update); "
        "its rounding error grows like N*H*W * u instead of sqrt(N*H*W) * u and leaves "
        "float32's envelope on large batches (spec section 8).",
        "Sum pairwise or in blocks (NumPy/torch reductions do), merge chunked Welford "
        "results with Chan's formula, or accumulate in float64.",
        "bn1",
        min_values=2**16,
    ),
    _row(
        "equinox_ema_mode",
        "Equinox BatchNorm in its default mode='ema'",
        "eqx.nn.BatchNorm's default mode='ema' on a fresh state (each call of a functional "
        "forward builds one) normalises with the batch statistics, as the spec does, but "
        "stores them as the new running averages: the incoming running_mean and "
        "running_var are dropped instead of kept with weight 0.99. Only the running "
        "statistics come out wrong.",
        "Construct eqx.nn.BatchNorm(..., mode=\"batch\") and put the incoming statistics in "
        "its state (state.set(bn.batch_state_index, (mean, var))): training then "
        "normalises with the batch statistics and the state holds 0.99 * running + 0.01 * "
        "batch (examples/recipes/recipe_equinox.py in the repository).",
        "batch_stats",
        _STATS,
    ),
    _row(
        "haiku_zero_debias",
        "Haiku moving averages zero-debiased from counter 0",
        "hk.BatchNorm keeps its statistics in hk.ExponentialMovingAverage states that "
        "return hidden / (1 - decay**counter); statistics loaded into hidden/average with "
        "counter 0 come back as (0.99 * old + 0.01 * batch) / 0.01, 100x too large.",
        "When loading statistics into the mean_ema/var_ema state, set hidden = average = "
        "the statistic and counter to a large value (e.g. 10_000, where 1 - 0.99**counter "
        "== 1 in float32), so the average is not debiased.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "biased_running_var_converted",
        "PyTorch's running-var conversion applied to a biased variance",
        "The running variance was converted with PyTorch's unbiased-to-biased factor "
        "(n - 1) / n (n = N*H*W) although it was biased already, as ONNX Runtime's "
        "BatchNormalization (training_mode=1) computes it: the batch term is too small.",
        "Convert only PyTorch's own running_var (nn.BatchNorm2d, F.batch_norm); take ONNX "
        "Runtime's running_var output (BatchNormalization output 2) as it is.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "whole_running_var_converted",
        "PyTorch's running_var multiplied as a whole by (n-1)/n",
        "PyTorch's updated running_var (0.99 * old + 0.01 * unbiased batch variance) was "
        "multiplied by (n - 1) / n as a whole (n = N*H*W): that converts the batch term but "
        "also shrinks the carried-over 0.99 * old, which was biased already.",
        "Convert the batch term only: resblock.conformance.convert.spec_running_var(old_var, "
        "bn.running_var, n), i.e. new = 0.99 * old + 0.01 * var_unbiased * (n - 1) / n.",
        "batch_stats",
        _STATS,
    ),
    _row(
        "torch_one_value_per_channel",
        "PyTorch BatchNorm refuses one value per channel",
        "nn.BatchNorm2d and F.batch_norm(training=True) raise 'Expected more than 1 value "
        "per channel when training' when N*H*W == 1 (batch 1 at 1x1). The spec defines "
        "it: the variance is 0, each BatchNorm outputs its bias, the block outputs "
        "relu(x + BatchNorm_1 bias).",
        "Handle N*H*W == 1 before calling BatchNorm2d: output = bias, running_mean = 0.99 * "
        "running_mean + 0.01 * value, running_var = 0.99 * running_var (see "
        "examples/recipes/recipe_torch_batchnorm2d.py in the resblock repository, "
        "SpecBatchNorm2d).",
        "bn1",
        max_values=1,
        backward_fix="Handle N*H*W == 1 before calling BatchNorm2d: each BatchNorm outputs "
        "its bias, so its input gradient and its scale gradient are exactly 0, its bias "
        "gradient is the incoming cotangent, and both conv kernel and bias gradients "
        "are 0 (spec 10.2 at n = 1); autograd through an explicit 'return bias' branch "
        "gives exactly that (see examples/recipes/recipe_torch_batchnorm2d.py in the resblock "
        "repository, SpecBatchNorm2d).",
    ),
)


# --- finding a row ---------------------------------------------------------------------

_BY_NAME: dict[str, Pitfall] = {}
for _p in PITFALLS:
    if _p.name in _BY_NAME:
        raise ValueError(f"duplicate pitfall name {_p.name!r}")
    _BY_NAME[_p.name] = _p
del _p


def lookup(name: str) -> Pitfall:
    """The pitfall called ``name``; KeyError listing close matches and all names if unknown."""
    try:
        return _BY_NAME[name]
    except KeyError:
        from resblock.conformance.mistakes.variants_backward import (
            BACKWARD_BY_NAME as backward_rows,
        )

        if name in backward_rows:  # a backward pitfall (--api backward): same fields
            return backward_rows[name]
        from resblock.conformance.mistakes.variants_inference import INFERENCE_BY_NAME

        if name in INFERENCE_BY_NAME:  # an inference pitfall (--api inference)
            return INFERENCE_BY_NAME[name]
        close = difflib.get_close_matches(name, _BY_NAME, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown pitfall {name!r}.{hint} Known pitfalls: {', '.join(sorted(_BY_NAME))}"
        ) from None


def applies(p: Pitfall, case) -> bool:
    """Whether mistake ``p`` can show on ``case`` (its family, its values per channel)."""
    n = case.n * case.h * case.w
    return (case.family in p.families and n >= p.min_values
            and (p.max_values is None or n <= p.max_values))


def needs(p) -> str:
    """What a case must have for mistake ``p`` (a forward or backward pitfall) to show,
    in a few words: why a grid without such a case cannot test it."""
    parts = []
    lo, hi = getattr(p, "min_values", 1), getattr(p, "max_values", None)
    if hi is not None and hi == lo:
        parts.append(f"exactly {lo} value{'s' if lo > 1 else ''} per channel")
    elif hi is not None:
        parts.append(f"{lo} to {hi} values per channel")
    elif lo > 1:
        parts.append(f"at least {lo} values per channel")
    if getattr(p, "min_features", 1) > 1:
        parts.append(f"at least {p.min_features} features")
    fams = getattr(p, "families", None)
    if fams is not None and set(fams) != set(FAMILIES):
        parts.append(f"a case of family {' or '.join(fams)}")
    if getattr(p, "at_exact_zero", False):
        parts.append("a ReLU input exactly 0 (inputs zeroinit or deadchan)")
    return ", ".join(parts) or "any case"


def names() -> tuple[str, ...]:
    """Pitfall names in table order."""
    return tuple(p.name for p in PITFALLS)
