"""Compute golden cases: derive inputs, run the reference, the oracle, the scores.

Pure computation: returns arrays; writing them is :mod:`resblock.golden.store`'s job.
"""

from __future__ import annotations

import numpy as np

from resblock.golden.store import STAGE_ARRAYS, flat_tree, group_arrays
from resblock.spec import (
    backward,
    error_model,
    error_model_backward,
    error_spread,
    error_store,
    oracle,
    tolerance,
)
from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES


class ReferenceRunner:
    """Runs the Flax reference under ``jit`` on a device, one compiled program per shape."""

    def __init__(self, device=None, precision: str = "highest", grad: bool = False):
        """``precision``: "highest" (the spec) or "default" (JAX's default, which runs
        float32 convolutions in TF32 on recent NVIDIA GPUs: only to demonstrate that
        ``verify`` and ``diff`` reject such goldens). ``grad``: run the forward and the
        VJP together (:func:`forward_vjp`, one program per shape); the forward-only
        program is unchanged."""
        import contextlib

        import jax

        from resblock.spec.reference import apply_block, full_precision

        if precision not in ("highest", "default"):
            raise ValueError(f"precision must be 'highest' or 'default', got {precision!r}")
        self._jax = jax
        self._precision = full_precision if precision == "highest" else contextlib.nullcontext
        self.device = device or jax.local_devices()[0]
        self._put = self.device != jax.devices()[0]  # see _placed
        self.grad = grad
        self._fn = jax.jit(forward_vjp if grad else apply_block)
        self._infer = None  # the inference forward, compiled on first use
        self._executables: dict = {}

    def use_executable(self, x_shape: tuple, compiled) -> None:
        """Run inputs of ``x_shape`` with an ahead-of-time compiled forward (same program,
        same bits: see :func:`compile_forward`)."""
        self._executables[tuple(x_shape)] = compiled

    def __call__(self, x, params, stats, y_bar=None):
        """``(y, new_stats)``; with ``grad``, ``(y, new_stats, x_bar, params_bar)`` for
        the cotangent ``y_bar``."""
        jax = self._jax
        args = self._placed((x, params, stats) if not self.grad else (x, params, stats, y_bar))
        compiled = self._executables.get(tuple(np.shape(x)))
        out = None
        if compiled is not None:
            try:
                out = compiled(*args)
            except Exception:  # noqa: BLE001 - a handed-over executable that cannot run
                self._executables.pop(tuple(np.shape(x)))  # here: compile it ourselves
        if out is None:
            with self._precision():
                out = self._fn(*args)
        return tuple(jax.tree_util.tree_map(np.asarray, o) for o in out)


    def _placed(self, args):
        """``args`` on this runner's device: NumPy as they are on JAX's default device
        (no device_put of their tree: 0.7 of a small case's 0.9 ms in the runner)."""
        return self._jax.device_put(args, self.device) if self._put else args

    def infer(self, x, params, running_stats):
        """``y`` of the inference block (Flax, ``use_running_average=True``, spec section
        12), under the same precision and on the same device as the forward."""
        jax = self._jax
        if self._infer is None:
            from resblock.spec.reference import apply_inference

            self._infer = jax.jit(apply_inference)
        args = self._placed((x, params, running_stats))
        with self._precision():
            return np.asarray(self._infer(*args))


def forward_vjp(x, params, stats, y_bar):
    """The reference forward and its VJP in one program: ``(y, new_stats, x_bar,
    params_bar)``, ``jax.vjp`` of the Flax block w.r.t. ``x`` and ``params`` with the
    cotangent ``y_bar`` for ``y`` and zeros for the (non-differentiated) running stats."""
    import jax

    from resblock.spec.reference import apply_block

    (y, new), vjp = jax.vjp(lambda xx, pp: apply_block(xx, pp, stats), x, params)
    x_bar, params_bar = vjp((y_bar, jax.tree_util.tree_map(jax.numpy.zeros_like, new)))
    return y, new, x_bar, params_bar


def compile_forward(case: Case, precision: str = "highest", grad: bool = False):
    """Ahead-of-time compile the reference forward for ``case``'s shapes.

    The same jitted function and precision as :class:`ReferenceRunner`, lowered from
    abstract shapes, so it needs no input values: a separate process can compile while
    this one derives inputs (``resblock.generator.compute``). Executables are identical to
    the jit path's (tests/generator/test_compile_worker.py).
    """
    import contextlib

    import jax

    from resblock.spec.reference import apply_block, full_precision

    f = case.features

    def sds(*shape):
        return jax.ShapeDtypeStruct(shape, np.float32)

    params = {conv: {"kernel": sds(3, 3, f, f), "bias": sds(f)} for conv in ("Conv_0", "Conv_1")}
    params.update({bn: {"scale": sds(f), "bias": sds(f)} for bn in ("BatchNorm_0", "BatchNorm_1")})
    stats = {bn: {"mean": sds(f), "var": sds(f)} for bn in ("BatchNorm_0", "BatchNorm_1")}
    ctx = full_precision() if precision == "highest" else contextlib.nullcontext()
    with ctx:
        if grad:
            return jax.jit(forward_vjp).lower(sds(*case.x_shape), params, stats,
                                              sds(*case.x_shape)).compile()
        return jax.jit(apply_block).lower(sds(*case.x_shape), params, stats).compile()


def compute_group(cases: list[Case], runner: ReferenceRunner, inputs=None,
                  stages: bool = False, inference: bool = False, y_bars=None):
    """The arrays of a shape group (stacked on axis 0) and per-case index extras: every
    CASE_ARRAYS name, the stage data (STAGE_ARRAYS) only with ``stages``, the inference
    block (INFERENCE_ARRAYS) only with ``inference``.

    ``inputs``: the ``(x, params, batch_stats)`` of each case, if already derived
    (``resblock.generator.batched.derive_cases`` derives many groups at once);
    ``y_bars``: their cotangents, likewise, for a gradient runner.
    """
    if inputs is None:
        from resblock.generator.batched import derive_cases

        inputs = derive_cases(cases)
    rows: list[dict] = []
    extras: list[dict] = []
    fp32 = tolerance.profile("fp32")
    if getattr(runner, "grad", False) and y_bars is None:
        from resblock.generator.batched import derive_y_bars

        y_bars = derive_y_bars(cases)
    if inference:
        from resblock.generator.batched import derive_running_stats_all

        running_stats = derive_running_stats_all(cases)
    for i, (case, (x, params, stats)) in enumerate(zip(cases, inputs, strict=True)):
        if getattr(runner, "grad", False):
            y_bar = y_bars[i]
            y, new_stats, x_bar, params_bar = runner(x, params, stats, y_bar)
            bw = backward.backward(x, params, stats, y_bar)
            ref = bw.forward
        else:
            y, new_stats = runner(x, params, stats)
            ref = oracle.forward(x, params, stats)
        arrays = {"x": x, "y": y}
        arrays.update(flat_tree("params", params, PARAM_NAMES))
        arrays.update(flat_tree("batch_stats_in", stats, STAT_NAMES))
        arrays.update(flat_tree("batch_stats_out", new_stats, STAT_NAMES))
        arrays["oracle/y"] = ref.y
        arrays.update(flat_tree("oracle/batch_stats_out", ref.batch_stats, STAT_NAMES))
        spread = grads = None
        if getattr(runner, "grad", False):  # one forward spread for both models
            spread = error_spread.forward_spread(x, params, stats, ref.stages)
            grads = grad_arrays(x, params, stats, y_bar, x_bar, params_bar, bw, spread=spread)
            spread = error_spread.sigmas_only(spread)  # its errors: 1.3 GB at real sizes
            del bw
        arrays.update(budget_arrays(x, params, stats, ref.stages, with_stages=stages,
                                    spread=spread))
        del spread
        if stages:
            arrays.update({f"oracle/stages/{k}": a for k, a in ref.stages.items()})
        else:  # the stage data is recomputed from the inputs by a reader that needs it
            arrays = {k: a for k, a in arrays.items() if k not in STAGE_ARRAYS}
        if grads is not None:
            arrays.update(grads)
            del grads
        if inference:
            running = running_stats[i]
            arrays.update(inference_arrays(x, params, running,
                                           runner.infer(x, params, running)))
        kappa = ref.kappa
        del ref  # the six float64 stages: 300 MB at 32x56x56x64
        rows.append(arrays)
        extras.append({"kappa": kappa, "ref_score": reference_score(case, arrays, fp32)})
    names = group_arrays(rows[0])
    if len(rows) == 1:  # a view, not a copy: a real-size case's arrays are 100s of MB
        return {k: np.asarray(rows[0][k])[None] for k in names}, extras
    stacked = {}
    for k in names:
        stacked[k] = np.stack([r[k] for r in rows])
        for r in rows:  # each array once in memory
            del r[k]
    return stacked, extras


def budget_arrays(x, params, stats, stages: dict, with_stages: bool = True,
                  spread=None) -> dict:
    """``budget/<t>``, ``budget_conv/<t>`` and ``budget_store/<t>`` arrays of one case (the
    error and storage models), and ``sigma/<t>``, ``sigma_conv/<t>``, ``sigma_store/<t>``
    of the output and stats (the spread and storage models). ``with_stages`` False: the
    budgets of the output and statistics only (the stages' are not stored then, and are
    dropped as soon as the models have used them). ``spread``: the case's
    :func:`resblock.spec.error_spread.forward_spread`, if the caller has it."""
    from resblock.golden.store import coarse_bounds, tensor_path

    names = error_model.TENSORS if with_stages else tuple(
        t for t in error_model.TENSORS if t not in error_model.STAGE_TENSORS)
    b = error_model.budgets(x, params, stats, stages, names)
    out = {}
    for name in names:
        out[f"budget/{tensor_path(name)}"] = b.fp32[name]
        out[f"budget_conv/{tensor_path(name)}"] = b.conv[name]
    sp = (error_spread.forward_spread(x, params, stats, stages, keep_errors=False)
          if spread is None else spread)
    for name in error_spread.SPREAD_TENSORS:
        out[f"sigma/{tensor_path(name)}"] = error_spread.stored(sp.sigma[name])
        out[f"sigma_conv/{tensor_path(name)}"] = error_spread.stored(sp.sigma_conv[name])
    del sp
    st = error_store.model(x, params, stats, stages, names)
    for name in names:
        out[f"budget_store/{tensor_path(name)}"] = st.budget[name]
    for name in error_store.SPREAD_TENSORS:
        out[f"sigma_store/{tensor_path(name)}"] = st.sigma[name]
    return coarse_bounds(out)


def grad_arrays(x, params, stats, y_bar, x_bar, params_bar, bw, reference=True,
                spread=None) -> dict:
    """The gradient datasets of one case (format 2.1): ``grad/y_bar``, the reference's
    ``grad/<t>``, the oracle's ``oracle/grad/<t>`` and their budgets (``reference``
    False: the oracle's and the budgets only, as ``resblock verify`` recomputes them).
    ``spread``: the case's forward spread with its errors kept, if the caller has it."""
    from resblock.golden.store import coarse_bounds, grad_path

    model = error_model_backward.model(x, params, stats, y_bar, bw, spread=spread)
    b = model.budgets
    out = {"oracle/grad/x": bw.x_bar}
    if reference:
        out.update({"grad/y_bar": y_bar, "grad/x": np.asarray(x_bar)})
        out.update(flat_tree("grad/params", params_bar, PARAM_NAMES))
    out.update(flat_tree("oracle/grad/params", bw.params_bar, PARAM_NAMES))
    for name in error_model_backward.GRAD_TENSORS:
        out[f"budget/{grad_path(name)}"] = b.fp32[name]
        out[f"budget_conv/{grad_path(name)}"] = b.conv[name]
        out[f"sigma/{grad_path(name)}"] = model.sigma[name]
        out[f"sigma_conv/{grad_path(name)}"] = model.sigma_conv[name]
    return coarse_bounds(out)


def inference_arrays(x, params, running_stats, y=None) -> dict:
    """The inference datasets of one case (format 6, spec section 12): the running
    statistics, the reference's ``inference/y`` (``y``; None: the oracle's arrays only, as
    ``resblock verify`` recomputes them), the float64 oracle, its budgets and spreads."""
    from resblock.golden.store import coarse_bounds
    from resblock.spec import inference, inference_store

    ref = inference.forward(x, params, running_stats)
    b = inference.budgets(x, params, running_stats, ref.stages)
    sig, sig_conv = inference.spreads(x, params, running_stats, ref.stages)
    out = flat_tree("inference/batch_stats", running_stats, STAT_NAMES)
    if y is not None:
        out["inference/y"] = np.asarray(y)
    out["oracle/inference/y"] = ref.y
    out["budget/inference/y"] = b.fp32["output"]
    out["budget_conv/inference/y"] = b.conv["output"]
    out["sigma/inference/y"] = sig["output"]
    out["sigma_conv/inference/y"] = sig_conv["output"]
    st = inference_store.model(x, params, running_stats, ref.stages)
    out["budget_store/inference/y"] = st.budget
    out["sigma_store/inference/y"] = st.sigma
    return coarse_bounds(out)


def reference_score(case: Case, arrays: dict, prof) -> float:
    """Worst gate score of the float32 reference (y, batch_stats_out) against the oracle:
    per element and, where the arrays have spreads, per tensor (the aggregate test)."""
    from resblock.golden.store import GoldenCase

    gc = GoldenCase(case=case, entry={}, arrays=arrays)
    stats = stats_view(arrays, "batch_stats_out")
    return tolerance.worst_score(gc, arrays["y"], stats, prof, aggregate=True)


def stats_view(arrays: dict, prefix: str) -> dict:
    """``{"BatchNorm_0/mean": arrays[prefix + "/BatchNorm_0/mean"], ...}``."""
    return {s: arrays[f"{prefix}/{s}"] for s in STAT_NAMES}
