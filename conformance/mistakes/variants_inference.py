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
    """

    name: str
    title: str
    explanation: str
    fix: str
    form: str = "subtract"

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
)

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


def infer_numpy(x, params, batch_stats, form: str = "subtract", mistake: str | None = None,
                dtype: str = "float32") -> np.ndarray:
    """``y`` of the inference block in ``dtype`` and ``form`` with ``mistake`` (None:
    correct); a mistake that exists only folded (:attr:`InferencePitfall.form`) runs
    folded whatever ``form`` says."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if mistake is not None and lookup(mistake).form == "folded":
        form = "folded"
    dt = np.dtype(dtype)
    x = np.asarray(x, dt)
    a = x
    for i in range(2):
        k = np.asarray(params[f"Conv_{i}"]["kernel"], dt)
        b = np.asarray(params[f"Conv_{i}"]["bias"], dt)
        scale = np.asarray(params[f"BatchNorm_{i}"]["scale"], dt)
        beta = np.asarray(params[f"BatchNorm_{i}"]["bias"], dt)
        mean = np.asarray(batch_stats[f"BatchNorm_{i}"]["mean"], dt)
        var = np.asarray(batch_stats[f"BatchNorm_{i}"]["var"], dt)
        if mistake == "inf_batch_stats":
            c = _conv(a, k, b, dt)
            mean = c.mean(axis=(0, 1, 2), dtype=dt)
            var = np.square(c - mean).mean(axis=(0, 1, 2), dtype=dt)
        g = _gain(scale, var, mistake, dt)
        if form == "folded":
            kg = k * (g[:, None] if mistake == "inf_fold_kernel_wrong_axis" else g)
            b_in = dt.type(0) if mistake == "inf_fold_bias_without_conv_bias" else b
            z = _conv(a, kg, (b_in - mean) * g + beta, dt)
        else:
            c = _conv(a, k, b, dt)
            z = c * g + (beta - mean * g) if form == "affine" else (c - mean) * g + beta
        a = np.maximum(z, dt.type(0)) if i == 0 else z
    return np.maximum(a + x, dt.type(0))


def make_infer(form: str = "subtract", mistake: str | None = None, dtype: str = "float32"):
    """``infer(x, params, batch_stats) -> y`` (float32 out): the inference contract."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if mistake is not None:
        lookup(mistake)

    def infer(x, params, batch_stats):
        with np.errstate(all="ignore"):
            y = infer_numpy(x, params, batch_stats, form, mistake, dtype)
        return y.astype(np.float32)

    infer.__name__ = f"infer_{mistake or form}"
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


def diagnose_inference(gc, y, prof) -> str | None:
    """The inference pitfall whose twin explains ``y`` (NHWC), or None: matched within
    tolerance, or ten times closer than to the oracle."""
    from resblock.conformance.mistakes.diagnose import best_match

    d_ref = inference_score(gc, y, prof)
    scores = {}
    with np.errstate(all="ignore"):
        for name, ref in twin_outputs(gc).items():
            s = inference_score(gc, y, prof, ref)
            scores[name] = (s, s)
    return best_match(d_ref, scores)
