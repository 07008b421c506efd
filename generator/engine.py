"""Compute one shape group of golden cases: derive inputs, run the reference, the oracle.

Pure computation: returns arrays; writing them is :mod:`resblock.golden.store`'s job.
"""

from __future__ import annotations

import numpy as np

from resblock.golden.store import CASE_ARRAYS
from resblock.spec import oracle, tolerance
from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES


def _flat(prefix: str, tree: dict, names) -> dict:
    out = {}
    for name in names:
        layer, leaf = name.split("/")
        out[f"{prefix}/{name}"] = np.asarray(tree[layer][leaf])
    return out


class ReferenceRunner:
    """Runs the Flax reference under ``jit`` on a device, one compiled program per shape."""

    def __init__(self, device=None):
        import jax

        from resblock.spec.reference import apply_block, full_precision

        self._jax = jax
        self._precision = full_precision
        self.device = device or jax.devices()[0]
        self._fn = jax.jit(apply_block)

    def __call__(self, x, params, stats):
        jax = self._jax
        args = jax.device_put((x, params, stats), self.device)
        with self._precision():
            y, new = self._fn(*args)
        return np.asarray(y), jax.tree_util.tree_map(np.asarray, new)


def compute_group(cases: list[Case], runner: ReferenceRunner) -> tuple[dict, list[dict]]:
    """All CASE_ARRAYS of a shape group (stacked on axis 0) and per-case index extras."""
    from resblock.spec.derivation import derive_variables, derive_x

    rows: list[dict] = []
    extras: list[dict] = []
    fp32 = tolerance.profile("fp32")
    for case in cases:
        x = derive_x(case)
        params, stats = derive_variables(case)
        y, new_stats = runner(x, params, stats)
        ref = oracle.forward(x, params, stats)
        arrays = {"x": x, "y": y}
        arrays.update(_flat("params", params, PARAM_NAMES))
        arrays.update(_flat("batch_stats_in", stats, STAT_NAMES))
        arrays.update(_flat("batch_stats_out", new_stats, STAT_NAMES))
        arrays["oracle/y"] = ref.y
        arrays.update(_flat("oracle/batch_stats_out", ref.batch_stats, STAT_NAMES))
        for stage, a in ref.stages.items():
            arrays[f"oracle/stages/{stage}"] = a
        rows.append(arrays)
        extras.append({"kappa": ref.kappa, "ref_score": reference_score(arrays, ref.kappa, fp32)})
    stacked = {k: np.stack([r[k] for r in rows]) for k in CASE_ARRAYS}
    return stacked, extras


def reference_score(arrays: dict, kappa: float, prof) -> float:
    """Worst gate score of the float32 reference (y, batch_stats_out) against the oracle."""
    worst = float(np.max(tolerance.scores(arrays["y"], arrays["oracle/y"], kappa, prof.output,
                                          prof)))
    for s in STAT_NAMES:
        sc = tolerance.scores(arrays[f"batch_stats_out/{s}"],
                              arrays[f"oracle/batch_stats_out/{s}"], kappa, prof.stats, prof)
        worst = max(worst, float(np.max(sc)))
    return worst
