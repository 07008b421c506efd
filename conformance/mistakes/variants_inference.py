"""The inference block as a NumPy port in each admitted form, and its deployment mistakes.

:func:`make_infer` returns ``infer(x, params, batch_stats) -> y`` (NHWC, HWIO kernels,
``batch_stats`` the running statistics, the kit's ``--api inference`` contract) in one of
the three float32 forms that spec section 12 admits, or with one mistake of
:data:`INFERENCE_PITFALLS` switched on. ``resblock check --api inference`` runs the
mistakes' twins on a failing case's inputs and names the one the implementation matches
(:func:`diagnose_inference`), as the forward and backward diagnoses do; the committed
golden set must reject every row (tests/conformance/judging/test_check_inference.py;
``resblock coverage`` shows it).

The module is independent of JAX: a NumPy twin of ``resblock.spec.reference``'s block
with ``use_running_average=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec.constants import EPSILON

# The float32 forms spec section 12.1 admits: BatchNorm evaluated as written (subtract
# the running mean first), folded into a per-channel affine map, or folded into the
# convolution before it (kernel and bias scaled by the gain).
FORMS = ("subtract", "affine", "folded")


@dataclass(frozen=True)
class InferencePitfall:
    """One deployment mistake of the inference block.

    Attributes:
      name: its key (what :func:`make_infer`'s ``mistake`` takes).
      title: a few words for a report line.
      explanation: what the port does differently, and where it comes from.
      fix: the change that makes it conform.
      form: the form in which the mistake exists (a folded bias exists only folded).
      store: the low type the twin stores every value in ("float16", "bfloat16"; None: a
        logic mistake in float32), accumulating in float32.
      match_profile: the profile under which a result is compared with the twin (a
        rounding twin reproduces a port only to within its type's rounding).
    """

    name: str
    title: str
    explanation: str
    fix: str
    form: str = "subtract"
    store: str | None = None
    match_profile: str = "fp32"

    def fix_for(self, api: str) -> str:
        """The fix text (an inference mistake has one, whatever the check)."""
        return self.fix


INFERENCE_PITFALLS: tuple[InferencePitfall, ...] = (
    InferencePitfall(
        "inf_fold_bias_without_conv_bias", "folded bias forgets the conv bias",
        "BatchNorm folded into the convolution with the bias beta - mean * g: the conv "
        "bias b is dropped, which goes unnoticed while b is 0 (ultralytics/yolov3#807)",
        "fold the bias as (b - running_mean) * g + beta with g = scale / sqrt(running_var "
        "+ 1e-5)", form="folded"),
    InferencePitfall(
        "inf_batch_stats", "batch statistics used at inference",
        "BatchNorm normalises with this batch's mean and variance, as in training mode "
        "(PyTorch model.train() left on, Flax use_running_average=False)",
        "normalise with the running statistics given in batch_stats (model.eval() in "
        "PyTorch, use_running_average=True in Flax); a training port is checked with "
        "--api functional"),
    InferencePitfall(
        "inf_epsilon_1e3", "epsilon 1e-3 instead of 1e-5",
        "BatchNorm's epsilon is 1e-3, the Keras/TensorFlow default, where Flax and PyTorch "
        "use 1e-5",
        "use epsilon = 1e-5 (Keras: BatchNormalization(epsilon=1e-5))"),
    InferencePitfall(
        "inf_epsilon_outside_sqrt", "epsilon added outside the square root",
        "g = scale / (sqrt(running_var) + eps) instead of scale / sqrt(running_var + eps)",
        "add epsilon to the variance inside the square root: scale / sqrt(running_var + "
        "1e-5)"),
    InferencePitfall(
        "inf_var_as_std", "running variance used as a standard deviation",
        "g = scale / (running_var + eps): the variance is divided by as if it were the "
        "standard deviation (a converter that maps a variance to a 'std' field)",
        "divide by sqrt(running_var + 1e-5): the running statistic is a variance"),
    InferencePitfall(
        "inf_fold_kernel_wrong_axis", "folded kernel scaled along the input axis",
        "BatchNorm folded into the convolution with the gain applied along the kernel's "
        "input-channel axis (HWIO axis 2, OIHW axis 1) instead of its output axis",
        "scale each output channel's filter by its gain: HWIO kernel * g[None, None, None, "
        ":] (OIHW: kernel * g[:, None, None, None])", form="folded"),
    InferencePitfall(
        "inf_float16_block", "inference block stored in float16",
        "The input, parameters, running statistics, the folded or computed gain and every "
        "activation are stored in float16 with float32 accumulation: model.half().eval(), "
        "an engine's float16 mode (TensorRT, ONNX Runtime, OpenVINO FP16). Errors ~1e-3 "
        "relative; a value beyond 65504 overflows",
        "if float16 is intended, check under --profile fp16 (spec section 12.4); otherwise "
        "keep the block in float32", store="float16", match_profile="fp16"),
    InferencePitfall(
        "inf_bfloat16_block", "inference block stored in bfloat16",
        "The input, parameters, running statistics, the gain and every activation are "
        "stored in bfloat16 with float32 accumulation: model.bfloat16().eval(), a TPU or "
        "an engine's bfloat16 mode. Errors ~1e-2 relative",
        "if bfloat16 is intended, check under --profile bf16 (spec section 12.4); otherwise "
        "keep the block in float32", store="bfloat16", match_profile="bf16"),
)
# The logic mistakes (every profile must reject them) and the rounding twins.
LOGIC_PITFALLS = tuple(p for p in INFERENCE_PITFALLS if p.store is None)

INFERENCE_BY_NAME = {p.name: p for p in INFERENCE_PITFALLS}


def lookup(name: str) -> InferencePitfall:
    return INFERENCE_BY_NAME[name]


def _conv(a, kernel, bias, dt):
    """SAME stride-1 3x3 cross-correlation in ``dt``: nine products summed in order."""
    n, h, w, _ = a.shape
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]), dt)
    for i in range(3):
        for j in range(3):
            out += ap[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out + bias


def _gain(scale, var, mistake, dt):
    eps = dt.type(1e-3 if mistake == "inf_epsilon_1e3" else EPSILON)
    if mistake == "inf_epsilon_outside_sqrt":
        return scale / (np.sqrt(var) + eps)
    if mistake == "inf_var_as_std":
        return scale / (var + eps)
    return scale / np.sqrt(var + eps)


def _keep(a):
    return a


def _low_type(store: str | None):
    """The rounding to the low type (float32 in and out), or the identity."""
    from resblock.conformance.mistakes.variants import _to_bfloat16, _to_float16

    if store is None:
        return _keep
    return {"float16": _to_float16, "bfloat16": _to_bfloat16}[store]


def infer_numpy(x, params, batch_stats, form: str = "subtract", mistake: str | None = None,
                dtype: str = "float32", store: str | None = None) -> np.ndarray:
    """``y`` of the inference block in ``dtype`` and ``form`` with ``mistake`` (None:
    correct); a mistake that exists only folded (:attr:`InferencePitfall.form`) runs
    folded whatever ``form`` says. ``store`` ("float16", "bfloat16"; a rounding twin's
    own) rounds every stored value to that type, accumulating in float32 (``dtype``
    float32): the inputs, parameters and statistics, each activation; subtracting first,
    BatchNorm runs in float32 on the stored operands (as PyTorch's ``half()`` kernels);
    the affine and folded forms store the reciprocal square root and the gain, the
    products, the folded kernel and every step of the shift or folded bias."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if mistake is not None:
        store = lookup(mistake).store or store
        if lookup(mistake).form == "folded":
            form = "folded"
    low = _low_type(store)
    dt = np.dtype("float32" if store else dtype)
    x = low(np.asarray(x, dt))
    a = x
    for i in range(2):
        k = low(np.asarray(params[f"Conv_{i}"]["kernel"], dt))
        b = low(np.asarray(params[f"Conv_{i}"]["bias"], dt))
        scale = low(np.asarray(params[f"BatchNorm_{i}"]["scale"], dt))
        beta = low(np.asarray(params[f"BatchNorm_{i}"]["bias"], dt))
        mean = low(np.asarray(batch_stats[f"BatchNorm_{i}"]["mean"], dt))
        var = low(np.asarray(batch_stats[f"BatchNorm_{i}"]["var"], dt))
        if mistake == "inf_batch_stats":
            c = _conv(a, k, b, dt)
            mean = c.mean(axis=(0, 1, 2), dtype=dt)
            var = np.square(c - mean).mean(axis=(0, 1, 2), dtype=dt)
        g = _gain(scale, var, mistake, dt)
        if store and form != "subtract":  # the gain stored, for the products with it
            g = low(scale * low(dt.type(1) / np.sqrt(var + dt.type(EPSILON))))
        if form == "folded":
            kg = low(k * (g[:, None] if mistake == "inf_fold_kernel_wrong_axis" else g))
            b_in = dt.type(0) if mistake == "inf_fold_bias_without_conv_bias" else b
            z = low(_conv(a, kg, low(low(low(b_in - mean) * g) + beta), dt))
        else:
            c = low(_conv(a, k, b, dt))
            if form == "affine":
                z = low(low(c * g) + low(beta - low(mean * g)))
            else:  # as PyTorch's kernels: in float32 from the stored operands
                z = low((c - mean) * g + beta)
        a = np.maximum(z, dt.type(0)) if i == 0 else z
    return np.maximum(low(a + x), dt.type(0))


def make_infer(form: str = "subtract", mistake: str | None = None, dtype: str = "float32",
               store: str | None = None):
    """``infer(x, params, batch_stats) -> y`` (float32 out): the inference contract
    (``store``: every stored value in that low type, as :func:`infer_numpy`)."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if mistake is not None:
        lookup(mistake)

    def infer(x, params, batch_stats):
        with np.errstate(all="ignore"):
            y = infer_numpy(x, params, batch_stats, form, mistake, dtype, store)
        return y.astype(np.float32)

    infer.__name__ = f"infer_{mistake or form}" + (f"_{store}" if store and not mistake else "")
    return infer


def inference_score(gc, y, prof, ref=None, aggregate: bool = False) -> float:
    """Worst per-element score of ``y`` (NHWC) against ``ref`` (default: the oracle) under
    the case's inference bounds; with ``aggregate``, the aggregate test's score against
    the oracle too (spec 12.4)."""
    from resblock.spec import tolerance

    want = gc.inference_reference() if ref is None else ref
    worst = tolerance.max_score(np.asarray(y, np.float64), want, gc.inference_bound(prof))
    if aggregate:
        worst = max(worst, gc.inference_aggregate_score(y, prof))
    return worst


def twin_outputs(gc) -> dict:
    """``{pitfall: y}`` of every inference twin on the case's inputs (float64)."""
    return {p.name: infer_numpy(gc.x, gc.params, gc.running_stats, mistake=p.name,
                                dtype="float64")
            for p in INFERENCE_PITFALLS}


def match_scores(gc, y, prof, twins: dict) -> dict:
    """How closely ``y`` reproduces each twin, ``{name: (score, match)}``, as the forward's
    :func:`resblock.conformance.mistakes.diagnose.match_scores`: the score against the
    twin under ``prof``, and for a rounding twin whose ``match_profile`` is looser, under
    that profile, ``inf`` unless ``y``'s own error is of the type's size."""
    from resblock.conformance.mistakes.diagnose import ROUNDING_SIZE
    from resblock.spec import tolerance

    out = {}
    for name, ref in twins.items():
        s = inference_score(gc, y, prof, ref)
        want = lookup(name).match_profile
        match = s
        if tolerance.looser(want, prof.name):
            loose = tolerance.profile(want)
            match = inference_score(gc, y, loose, ref)
            if inference_score(gc, y, loose) > ROUNDING_SIZE * inference_score(gc, ref, loose):
                match = np.inf
        out[name] = (s, match)
    return out


def diagnose_inference(gc, y, prof, twins: dict | None = None) -> str | None:
    """The inference pitfall whose twin explains ``y`` (NHWC), or None: matched within
    tolerance, or ten times closer than to the oracle."""
    from resblock.conformance.mistakes.diagnose import best_match

    d_ref = inference_score(gc, y, prof)
    with np.errstate(all="ignore"):
        if twins is None:
            twins = twin_outputs(gc)
        return best_match(d_ref, match_scores(gc, y, prof, twins))
