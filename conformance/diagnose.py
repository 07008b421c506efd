"""Name the known mistake a failing implementation's results match.

For a failing case, every wrong variant of :mod:`resblock.conformance.variants` (a
NumPy twin of the block with one pitfall switched on) is run on the case's inputs, and
the implementation's results are scored against each variant's with the case's own
bound. A pitfall is named when the implementation agrees with that variant within
tolerance, or at least ten times more closely than with the float64 oracle (TF32 and
bf16 rounding is reproduced only approximately, so an exact match is not required).
"""

from __future__ import annotations

import numpy as np

from resblock.conformance import adapters
from resblock.spec import tolerance
from resblock.spec.constants import STAT_NAMES

CLOSER_BY = 10.0


def diagnose_case(gc, result, config, prof) -> str | None:
    """The name of the pitfall whose variant best explains ``result``, or None."""
    import warnings

    from resblock.conformance.pitfalls import PITFALLS
    from resblock.conformance.variants import make_forward

    c = gc.case
    try:
        y, stats, _ = adapters.split_result(result, config.api)
        y = np.asarray(y, dtype=np.float64)
        if config.api == "seeded":
            y = y.reshape(1, c.h, c.w, c.features)
        else:
            y = adapters.output_from_user_layout(y, config.layout)
        stats = None if stats is None else adapters.check_stats(
            {k: {kk: np.asarray(vv, np.float32) for kk, vv in v.items()}
             for k, v in stats.items()}, c.features)
    except (adapters.ContractError, ValueError, AttributeError, TypeError):
        return None
    oracle_stats = {n: gc.arrays[f"oracle/batch_stats_out/{n}"] for n in STAT_NAMES}
    d_ref = tolerance.worst_score(y, gc.arrays["oracle/y"], stats, oracle_stats, gc.kappa, prof)
    best, best_score = None, np.inf
    for p in PITFALLS:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                vy, vstats = make_forward(p.variant, keep_dtype=True)(
                    gc.x, gc.params, gc.batch_stats_in)
            except Exception:  # noqa: BLE001 - a variant may not apply to this shape
                continue
        vflat = {n: vstats[n.split("/")[0]][n.split("/")[1]] for n in STAT_NAMES}
        if not np.all(np.isfinite(vy)) and not np.all(np.isfinite(y)):
            score = 0.0 if np.array_equal(np.isnan(vy), np.isnan(y)) else np.inf
        else:
            score = tolerance.worst_score(y, vy, stats, vflat, gc.kappa, prof)
        if score < best_score:
            best, best_score = p.name, score
    if best is not None and (best_score <= 1.0 or best_score * CLOSER_BY <= d_ref):
        return best
    return None
