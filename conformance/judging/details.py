"""Compact evidence of where a failing case goes wrong, for the HTML report.

Pure: a golden case and the implementation's raw result in, a small JSON-ready dict
out (schema ``check-report``, key ``details``). The runner calls :func:`case_detail` only
for its worst failing cases, so a plain check pays nothing.

Scores come from :func:`resblock.conformance.judging.compare.element_scores` (``|got - ref| /
bound``; the bound is score 1) and are stored as integer *levels*:
``ceil(LEVELS_PER_DECADE * log10(score))``, clipped to ``[LEVEL_MIN, LEVEL_MAX]``. Level
0 is the bound: a score just over it gets level 1, never 0, so the pass/fail boundary
survives the quantisation. Non-finite scores (NaN or Inf results) get ``LEVEL_MAX``.

The shapes of the mistakes are what the maps are for: a padding mistake is a ring of
high levels along the border of the (H, W) map, a flipped kernel follows the image's
edges, a channel-order mistake lights whole channels (``channel_worst``), a statistics
mistake leaves the maps dark and shows in the running-stat vectors.
"""

from __future__ import annotations

import math

import numpy as np

from resblock.conformance.running import adapters
from resblock.spec.constants import STAGES, STAT_NAMES

LEVELS_PER_DECADE = 8
LEVEL_MIN = -8 * LEVELS_PER_DECADE  # score 1e-8 and below (0 included)
LEVEL_MAX = 8 * LEVELS_PER_DECADE  # score 1e8 and above, NaN and Inf
MAX_SIDE = 32  # maps larger than this are max-pooled down to it
MAX_MAPS = 4  # worst (sample, channel) maps per tensor
MAX_STAT_CHANNELS = 256  # running-stat vectors longer than this keep their worst channels


def levels(scores) -> np.ndarray:
    """Integer levels of an array of scores (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, LEVEL_MAX, dtype=np.int64)
    fin = np.isfinite(s)
    with np.errstate(divide="ignore"):
        lv = np.ceil(LEVELS_PER_DECADE * np.log10(np.where(fin, s, 1.0)) - 1e-9)
    out[fin] = np.clip(lv[fin], LEVEL_MIN, LEVEL_MAX).astype(np.int64)
    return out


def score_of_level(level: int) -> float:
    """The upper edge of a level's score interval (level 0: the bound, 1.0)."""
    return 10.0 ** (level / LEVELS_PER_DECADE)


def pool_max(a: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, list[int]]:
    """Max-pool the last two axes so neither exceeds ``max_side`` (the worst survives);
    returns the pooled array and the pooling steps."""
    h, w = a.shape[-2:]
    sh, sw = max(1, math.ceil(h / max_side)), max(1, math.ceil(w / max_side))
    if sh == sw == 1:
        return a, [1, 1]
    ph, pw = math.ceil(h / sh), math.ceil(w / sw)
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph * sh - h), (0, pw * sw - w)]
    padded = np.pad(a, pad, constant_values=np.iinfo(np.int64).min)
    shaped = padded.reshape(a.shape[:-2] + (ph, sh, pw, sw))
    return shaped.max(axis=(-3, -1)), [sh, sw]


def tensor_maps(name: str, scores: np.ndarray, max_maps: int = MAX_MAPS) -> dict:
    """Level maps over (H, W) of an NHWC score array: the typical level of each pixel
    (``typical``, the mean over samples and channels), the ``max_maps`` worst (sample,
    channel) pairs (``maps``), and the worst level of every channel (``channel_worst``).
    Maps are row-major lists of ``rows * cols`` levels (max-pooled by ``step``)."""
    n, h, w, c = scores.shape
    lv = levels(scores)
    # The typical level of each pixel over all samples and channels. Elements that are
    # exactly right (both sides 0 after the final ReLU) are left out: they would only
    # add salt-and-pepper noise that hides the shape of the error.
    hit = lv > LEVEL_MIN
    counts = hit.sum(axis=(0, 3))
    sums = np.where(hit, lv, 0).sum(axis=(0, 3))
    typical = np.where(counts > 0, np.round(sums / np.maximum(counts, 1)), LEVEL_MIN)
    per_nc = lv.max(axis=(1, 2))  # (N, C)
    order = np.argsort(-per_nc, axis=None, kind="stable")[:max_maps]
    maps = []
    for flat in order:
        i, ch = divmod(int(flat), c)
        pooled, step = pool_max(lv[i, :, :, ch])
        maps.append({"sample": i, "channel": ch, "worst": int(per_nc[i, ch]),
                     "levels": pooled.ravel().tolist()})
    sh, sw = max(1, math.ceil(h / MAX_SIDE)), max(1, math.ceil(w / MAX_SIDE))
    return {"tensor": name, "shape": [n, h, w, c], "rows": math.ceil(h / sh),
            "cols": math.ceil(w / sw), "step": [sh, sw],
            "channel_worst": lv.max(axis=(0, 1, 2)).tolist(),
            "typical": pool_max(typical.astype(np.int64))[0].ravel().tolist(), "maps": maps}


def stat_vectors(gc, stats: dict, prof) -> list[dict]:
    """Per-channel expected and returned values of the four running-stat vectors."""
    from resblock.conformance.judging.compare import element_scores

    out = []
    for name in STAT_NAMES:
        exp = np.asarray(gc.arrays[f"oracle/batch_stats_out/{name}"], dtype=np.float64)
        got = np.asarray(stats[name], dtype=np.float64)
        lv = levels(element_scores(gc, name, got, prof))
        channels = np.arange(exp.size)
        if exp.size > MAX_STAT_CHANNELS:
            channels = np.sort(np.argsort(-lv, kind="stable")[:MAX_STAT_CHANNELS])
        out.append({"name": name, "channels": channels.tolist(),
                    "expected": [_num(v) for v in exp[channels]],
                    "got": [_num(v) for v in got[channels]],
                    "levels": lv[channels].tolist()})
    return out


def _num(v: float):
    """A float for JSON, 7 significant digits; non-finite values as strings."""
    return float(f"{v:.7g}") if np.isfinite(v) else str(v)


def case_detail(gc, result, config, prof, stage: str | None) -> dict | None:
    """Maps and stat vectors of one judged case, or None if its result is unusable.

    ``result``: what the implementation returned; ``stage``: the first diverging stage
    the runner found (mapped too when the implementation returned intermediates).
    """
    from resblock.conformance.judging.compare import element_scores

    c = gc.case
    if config.api == "inference":
        return _inference_detail(gc, result, config, prof)
    try:
        y, stats, inter = adapters.split_result(result, config.api)
        y = np.asarray(adapters.as_numpy(y, "output"), dtype=np.float64)
        if config.api == "seeded":
            y = y.reshape(1, c.h, c.w, c.features)
        else:
            y = adapters.output_from_user_layout(y, config.layout)
        if y.shape != (c.n, c.h, c.w, c.features):
            return None
        stats = None if stats is None else adapters.check_stats(stats, c.features)
    except (adapters.ContractError, ValueError, AttributeError, TypeError):
        return None
    with np.errstate(all="ignore"):
        detail = {"maps": [tensor_maps("output", element_scores(gc, "output", y, prof))]}
        if stage and stage in STAGES and stage != "output" and inter and stage in inter:
            try:
                got = np.asarray(adapters.as_numpy(inter[stage], stage), dtype=np.float64)
                got = adapters.output_from_user_layout(got, config.layout)
                if got.shape == y.shape:
                    detail["maps"].append(tensor_maps(stage,
                                                      element_scores(gc, stage, got, prof)))
            except (adapters.ContractError, ValueError, TypeError):
                pass
        if stats is not None:
            detail["stats"] = stat_vectors(gc, stats, prof)
    return detail


def _inference_detail(gc, result, config, prof) -> dict | None:
    """The output's maps of an inference case (spec section 12), against the inference
    oracle and bounds; None if its result is unusable."""
    from resblock.spec import tolerance

    try:
        y = adapters.split_inference(result, gc.case, config.layout)
    except (adapters.ContractError, ValueError, AttributeError, TypeError):
        return None
    with np.errstate(all="ignore"):
        scores = tolerance.scores(y, gc.inference_reference(), gc.inference_bound(prof))
        return {"maps": [tensor_maps("output", scores)]}

