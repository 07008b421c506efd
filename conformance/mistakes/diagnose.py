"""Name the known mistake a failing implementation's results match.

For a failing case, every wrong variant of :mod:`resblock.conformance.mistakes.variants` (a
NumPy twin of the block with one pitfall switched on) is run on the case's inputs, and
the implementation's results are scored against each variant's with the case's own
bound. A pitfall is named when the implementation agrees with that variant within
tolerance, or at least ten times more closely than with the float64 oracle (TF32 and
bf16 rounding is reproduced only approximately, so an exact match is not required).
"""

from __future__ import annotations

import numpy as np

from resblock.conformance.running import adapters
from resblock.spec import tolerance
from resblock.spec.constants import STAT_NAMES

CLOSER_BY = 10.0


def twin_outputs(gc, errors: dict | None = None) -> dict:
    """``{pitfall: (y, stats)}`` of every applicable twin on the case's inputs (float32,
    stats flat ``{"BatchNorm_0/mean": ...}``); twins that raise here are left out (their
    messages go to ``errors`` when given: a refusal is how some mistakes show)."""
    import warnings

    from resblock.conformance.mistakes.pitfalls import PITFALLS, applies
    from resblock.conformance.mistakes.variants import make_forward

    out = {}
    for p in PITFALLS:
        if not applies(p, gc.case):
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                vy, vstats = make_forward(p.variant, keep_dtype=True)(
                    gc.x, gc.params, gc.batch_stats_in)
            except Exception as e:  # noqa: BLE001 - a variant may not apply to this shape
                if errors is not None:
                    errors[p.name] = str(e)
                continue
        out[p.name] = (vy, {n: vstats[n.split("/")[0]][n.split("/")[1]] for n in STAT_NAMES})
    return out


# A rounding twin (TF32, bf16) explains a result only if the result's own error is of
# that format's size: at most this many times the twin's own deviation from the oracle
# (truncation errs up to twice as far as the twin's round-to-nearest, plus spread).
ROUNDING_SIZE = 3.0


def match_scores(gc, y, stats, prof, twins: dict) -> dict:
    """How closely ``(y, stats)`` reproduces each twin: ``{name: (score, match)}``, the
    worst score against the twin's results under the case's bounds for ``prof`` (one
    yardstick for every twin), and under the pitfall's own ``match_profile`` when that
    is looser (a rounding twin reproduces a port only to within its format's rounding).
    For such a twin ``match`` is ``inf`` unless the result deviates from the oracle by
    no more than :data:`ROUNDING_SIZE` times the twin itself does (under that profile):
    a small logic error is not a rounding mode."""
    from resblock.conformance.mistakes.pitfalls import lookup

    out = {}
    for name, (vy, vstats) in twins.items():
        if not np.all(np.isfinite(vy)) and not np.all(np.isfinite(y)):
            same = 0.0 if np.array_equal(np.isnan(vy), np.isnan(y)) else np.inf
            out[name] = (same, same)
            continue
        score = tolerance.worst_score(gc, y, stats, prof, ref_y=vy, ref_stats=vstats)
        want = lookup(name).match_profile
        if tolerance.looser(want, prof.name):
            loose = tolerance.profile(want)
            match = tolerance.worst_score(gc, y, stats, loose, ref_y=vy, ref_stats=vstats)
            own = tolerance.worst_score(gc, vy, vstats, loose)
            if tolerance.worst_score(gc, y, stats, loose) > ROUNDING_SIZE * own:
                match = np.inf
        else:
            match = score
        out[name] = (score, match)
    return out


def best_match(d_ref: float, scores: dict) -> str | None:
    """The pitfall named for a result whose own score is ``d_ref``: among the twins it
    matches within tolerance, the closest on the common yardstick; failing that, the
    closest twin when it is ten times closer than the oracle."""
    if not scores:
        return None
    # Within a twin's own tolerance, and nearer to it than to the oracle.
    within = [k for k in scores if scores[k][1] <= 1.0 and scores[k][0] < max(d_ref, 1.0)]
    if within:
        # bf16's bound also holds a TF32 result and the reverse can hold too: several
        # twins may match; the one nearest on the common yardstick explains the result.
        return min(within, key=lambda k: scores[k][0])
    best = min(scores, key=lambda k: scores[k][0])
    if np.isfinite(scores[best][0]) and scores[best][0] * CLOSER_BY <= d_ref:
        return best
    return None


def diagnose_case(gc, result, config, prof, twins: dict | None = None) -> str | None:
    """The name of the pitfall whose variant best explains ``result``, or None."""
    c = gc.case
    if config.api == "backward":
        from resblock.conformance.mistakes.variants_backward import diagnose_backward

        try:
            grads = adapters.split_backward(result, c, config.layout)
        except (adapters.ContractError, ValueError, AttributeError, TypeError):
            return None
        return diagnose_backward(gc, grads, prof)
    if config.api == "inference":
        from resblock.conformance.mistakes.variants_inference import diagnose_inference

        try:
            y = adapters.split_inference(result, c, config.layout)
        except (adapters.ContractError, ValueError, AttributeError, TypeError):
            return None
        return diagnose_inference(gc, y, prof)
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
    d_ref = tolerance.worst_score(gc, y, stats, prof)
    if twins is None:
        twins = twin_outputs(gc)
    return best_match(d_ref, match_scores(gc, y, stats, prof, twins))


def diagnose_error(gc, message: str, raised: dict | None = None) -> str | None:
    """The pitfall whose twin raises, on this case, the error the implementation raised.

    Some mistakes are refusals rather than wrong numbers (PyTorch's BatchNorm raises at
    one value per channel); their twin raises the library's own message. The pitfall is
    named when the first clause of the twin's message (up to the first comma) appears in
    the implementation's error, so sizes and tensor reprs may differ. ``raised``: the
    twins' messages on this case when already collected by :func:`twin_outputs`.
    """
    if raised is None:
        raised = {}
        twin_outputs(gc, raised)
    for name, text in raised.items():
        clause = text.split(",")[0].strip()
        if len(clause) >= 16 and clause in message:
            return name
    return None
