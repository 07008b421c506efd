"""Self-contained HTML pages: a check report (``resblock check --html``, ``resblock
report``) and the coverage command's detection matrix (:func:`render_coverage`). The pages
are assembled from the JSON a run already writes (schema ``check-report``; its optional
``details`` carry the error maps, see :mod:`resblock.conformance.judging.details`), so
that a saved report renders the same later: this module derives what each page shows,
renders the Jinja2 templates of ``templates/`` (the ``html`` extra, imported only when a
page is rendered) and writes the file. The page is one file: inline CSS, inline SVG, one
small inline script that checks the page itself, and a Content-Security-Policy that
forbids every load from outside the file.

The drawing comes first: the colour scale of score levels and every piece of markup the
kit writes by hand, namely the inline SVG of the error maps, running-stat bars, score
histogram and coverage-matrix strips, and the colour legends. Those are pure functions
from levels and numbers to strings: no document is read and no template is involved
there. Cells of a map are grouped into one ``<path>`` per colour, which keeps a map to a
few hundred bytes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from importlib import resources

from resblock.conformance.judging.details import LEVEL_MAX, LEVEL_MIN, LEVELS_PER_DECADE

MAX_TABLE_ROWS = 2000  # cases listed in the all-cases table (worst first)
MAX_COVERAGE_COLUMNS = 240  # beyond this the coverage matrix shows one column per group
CLOSEST = 10  # a conforming run lists this many cases closest to the bound
GRID_SPAN = 4 * LEVELS_PER_DECADE  # the fixed scale runs from 1e-4 to 1e4

_COOL = ((0x14, 0x1e, 0x3c), (0x3b, 0x55, 0x8c), (0x8f, 0xa8, 0xd8))  # within the bound
_HOT = ((0xd7, 0x30, 0x1f), (0xfc, 0x8d, 0x59), (0xff, 0xf2, 0xb0))  # beyond it
ERROR_COLOUR = "#9a9a9a"
SKIP_COLOUR = "#d9d9d9"  # a case outside the profile (spec 8.6): not run, no score
NOT_RUN_COLOUR = "#ececec"  # a coverage cell with no score (the row does not apply there)


# --- colour scale --------------------------------------------------------------------
# One log scale of the score for the grid and the coverage matrix, the bound (score 1)
# as the boundary: blues within the bound (darker = more margin), reds to pale yellow
# beyond it (brighter = worse). Error maps use the same two halves, with the hot half
# stretched over the tensor's own range of levels so that the shape of the error shows
# (a padding mistake's ring is brighter than the interior it also disturbs).


def _ramp(stops, t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    rgb = (round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1], strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def colour(level: int, lo: int = 1, hi: int = GRID_SPAN) -> str:
    """Colour of a score level: cool within the bound (level <= 0, fixed from -GRID_SPAN
    to 0), hot beyond it (stretched from ``lo`` to ``hi``)."""
    if level <= 0:
        return _ramp(_COOL, (level + GRID_SPAN) / GRID_SPAN)
    return _ramp(_HOT, (level - lo) / (hi - lo) if hi > lo else 1.0)


def level_of(score) -> int:
    """Level of a report score (a number, or "inf"/"nan" from JSON)."""
    from resblock.conformance.judging.details import levels

    try:
        s = float(score)
    except (TypeError, ValueError):
        return LEVEL_MAX
    return int(levels([s])[0])


# --- SVG pieces ------------------------------------------------------------------------


def _cells_svg(levels, rows: int, cols: int, px: int, lo: int, hi: int, attrs: str = "",
               title: str = "") -> str:
    """A rows x cols grid of coloured cells as one SVG, one path per colour."""
    paths: dict[str, list[str]] = defaultdict(list)
    for k, lv in enumerate(levels):
        r, c = divmod(k, cols)
        paths[NOT_RUN_COLOUR if lv is None else colour(lv, lo, hi)].append(f"M{c} {r}h1v1h-1z")
    body = "".join(f'<path fill="{fill}" d="{"".join(d)}"/>' for fill, d in sorted(paths.items()))
    t = f"<title>{_esc(title)}</title>" if title else ""
    return (f'<svg viewBox="0 0 {cols} {rows}" '
            f'width="{cols * px}" height="{rows * px}" shape-rendering="crispEdges" '
            f'{attrs}>{t}{body}</svg>')


def _esc(text) -> str:
    from markupsafe import escape

    return str(escape(str(text)))


def _map_px(rows: int, cols: int) -> int:
    return max(3, min(12, 160 // max(rows, cols)))  # 16x16: 10 px cells, five maps a row


def tensor_maps_html(tm: dict) -> str:
    """The maps of one tensor: typical level, worst channels, worst level per channel."""
    # Two hot ranges, each a tensor's own: the typical map's (so its shape shows) and
    # the single-channel maps' (comparable with each other and the channel strip).
    t_lo, t_hi = _hot_range(tm["typical"])
    lo, hi = _hot_range([v for m in tm["maps"] for v in m["levels"]] + tm["channel_worst"])
    rows, cols = tm["rows"], tm["cols"]
    px = _map_px(rows, cols)
    n, h, w, c = tm["shape"]
    pooled = "" if tm["step"] == [1, 1] else \
        f" (max-pooled by {tm['step'][0]}x{tm['step'][1]})"
    figs = []
    common = f'class="map" data-tensor="{_esc(tm["tensor"])}" data-rows="{rows}" ' \
             f'data-cols="{cols}"'
    figs.append("<figure>" + _cells_svg(
        tm["typical"], rows, cols, px, t_lo, t_hi,
        f'{common} data-kind="typical" data-lo="{t_lo}" data-hi="{t_hi}" '
        f'data-levels="{",".join(map(str, tm["typical"]))}"',
        f"{tm['tensor']}: typical score per pixel over all samples and channels")
        + "<figcaption>typical (all samples and channels)<br>"
        + legend_html(t_lo, t_hi, short=True) + "</figcaption></figure>")
    for m in tm["maps"]:
        figs.append("<figure>" + _cells_svg(
            m["levels"], rows, cols, px, lo, hi,
            f'{common} data-kind="channel" data-lo="{lo}" data-hi="{hi}" '
            f'data-sample="{m["sample"]}" '
            f'data-channel="{m["channel"]}" data-levels="{",".join(map(str, m["levels"]))}"',
            f"{tm['tensor']}: sample {m['sample']}, channel {m['channel']}")
            + f"<figcaption>n={m['sample']} c={m['channel']}: worst "
              f"{_score_text(m['worst'])}</figcaption></figure>")
    strip_px = max(2, min(14, 480 // max(c, 1)))
    strip = _cells_svg(tm["channel_worst"], 1, c, strip_px, lo, hi,
                       f'class="strip" data-tensor="{_esc(tm["tensor"])}" height="14" '
                       'preserveAspectRatio="none"', "worst score of each channel")
    legend = legend_html(lo, hi)
    return (f'<div class="tensor-maps"><h4>{_esc(tm["tensor"])} '
            f'<small>N={n} H={h} W={w} C={c}{pooled}</small></h4>'
            f'<div class="maps">{"".join(figs)}</div>'
            f'<div class="strip-row"><span>worst per channel (c = 0..{c - 1})</span>{strip}</div>'
            f"{legend}</div>")


def _score_text(level: int) -> str:
    if level >= LEVEL_MAX:
        return "&ge;1e8 or non-finite"
    if level <= LEVEL_MIN:
        return "&le;1e-8"
    return f"&asymp;{10 ** (level / LEVELS_PER_DECADE):.2g}"


def _hot_range(levels) -> tuple[int, int]:
    """The (lowest, highest) level beyond the bound, or (1, 0) when none is."""
    pos = [v for v in levels if v > 0]
    return (min(pos), max(pos)) if pos else (1, 0)


def legend_html(lo: int, hi: int, short: bool = False) -> str:
    """The key of the colour scale: the cool half up to the bound and the hot half from
    ``lo`` to ``hi``, or (``short``) the hot half alone."""
    if short:  # only the hot half: the range a typical map is stretched over
        if hi <= 0:
            return '<span class="legend">within the bound</span>'
        hot = "".join(f'<i style="background:{colour(v, lo, hi)}"></i>'
                      for v in range(lo, hi + 1, max(1, (hi - lo) // 6)))
        return (f'<span class="legend"><span>{_score_text(lo)}</span>{hot}'
                f'<span>{_score_text(hi)}</span></span>')
    cool = [colour(v) for v in range(-GRID_SPAN, 1, 4)]
    hot = [colour(v, lo, hi) for v in range(lo, hi + 1, max(1, (hi - lo) // 8))] \
        if hi > 0 else []
    sw = "".join(f'<i style="background:{c}"></i>' for c in cool)
    sh = "".join(f'<i style="background:{c}"></i>' for c in hot)
    right = f'<span class="bnd">| bound |</span>{sh}<span>{_score_text(hi)}</span>' if hot \
        else '<span class="bnd">| bound</span>'
    return f'<div class="legend"><span>1e-4</span>{sw}{right}</div>'


def stats_html(stats: list[dict]) -> str:
    """Per-channel bars of the four running-stat vectors: expected (grey) vs returned."""
    out = []
    for s in stats:
        exp = [as_float(v) for v in s["expected"]]
        got = [as_float(v) for v in s["got"]]
        finite = [abs(v) for v in exp + got if math.isfinite(v)]
        top = max(finite, default=1.0) or 1.0
        neg = any(v < 0 for v in exp + got if math.isfinite(v))
        k = len(exp)
        bw = max(2, min(12, 480 // max(2 * k, 1)))
        height, base = (80, 40) if neg else (60, 60)
        scale = (base if neg else height) / top
        bar = bw - 1 if bw > 3 else bw
        parts = []
        for i, (e, g, lv) in enumerate(zip(exp, got, s["levels"], strict=True)):
            x = 2 * i * bw
            for j, (v, fill) in enumerate(((e, "#b8b8b8"), (g, colour(lv)))):
                vv = v if math.isfinite(v) else top
                hgt = abs(vv) * scale
                y = base - hgt if vv >= 0 else base
                parts.append(f'<rect x="{x + j * bw}" y="{y:.2f}" width="{bar}" '
                             f'height="{max(hgt, 0.5):.2f}" fill="{fill}"/>')
        ratios = sorted(g / e for e, g in zip(exp, got, strict=True)
                        if e != 0 and math.isfinite(e) and math.isfinite(g))
        ratio = f"median got/expected {ratios[len(ratios) // 2]:.5g}" if ratios else ""
        worst = max(s["levels"], default=LEVEL_MIN)
        svg = (f'<svg class="bars" width="{2 * k * bw}" '
               f'height="{height}" data-stat="{_esc(s["name"])}" data-worst="{worst}">'
               f'<line x1="0" x2="{2 * k * bw}" y1="{base}" y2="{base}" stroke="#666" '
               f'stroke-width="0.5"/>{"".join(parts)}</svg>')
        state = "beyond the bound" if worst > 0 else "within the bound"
        out.append(f'<div class="stat"><div class="stat-head"><b>{_esc(s["name"])}</b> '
                   f'{k} channels, {state}, worst {_score_text(worst)}; {ratio}</div>{svg}</div>')
    return ('<div class="stats"><p class="note">grey: expected (float64 oracle); coloured: '
            'returned, by score</p>' + "".join(out) + "</div>")


def as_float(v) -> float:
    """A number from a report (JSON may hold "inf"/"nan" as text); NaN when not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def histogram_svg(scores: list[float]) -> str:
    """Counts of worst scores per half decade, from <=1e-4 to >1 (the bound marked)."""
    edges = [10 ** (e / 2) for e in range(-8, 1)]  # 1e-4 ... 1
    bins = [0] * (len(edges) + 1)
    for s in scores:
        i = 0
        while i < len(edges) and s > edges[i]:
            i += 1
        bins[i] += 1
    top = max(bins) or 1
    bw, hgt = 48, 120
    parts = []
    ticks = [f"{e:.0e}".replace("e-0", "e-").replace("e+00", "") for e in edges]
    labels = [f"<={ticks[0]}"] + [f"{ticks[i]}..{ticks[i + 1]}" for i in range(len(edges) - 1)] \
        + [">1"]
    for i, n in enumerate(bins):
        h = n / top * hgt
        lv = -GRID_SPAN + i * LEVELS_PER_DECADE // 2 if i < len(edges) else GRID_SPAN
        parts.append(f'<rect x="{i * bw + 2}" y="{hgt - h + 14:.1f}" width="{bw - 4}" '
                     f'height="{h:.1f}" fill="{colour(lv)}"><title>{labels[i]}: {n}</title>'
                     f'</rect><text x="{i * bw + bw / 2}" y="{hgt + 12 - h:.1f}" '
                     f'text-anchor="middle">{n}</text>')
    for i, t in enumerate(ticks):
        parts.append(f'<text x="{(i + 1) * bw}" y="{hgt + 28}" text-anchor="middle" '
                     f'class="tick">{t}</text>')
    x = len(edges) * bw
    parts.append(f'<line x1="{x}" x2="{x}" y1="0" y2="{hgt + 16}" stroke="#c00" '
                 'stroke-dasharray="3 2"/>')
    return (f'<svg class="hist" width="{len(bins) * bw}" '
            f'height="{hgt + 34}" data-bins="{",".join(map(str, bins))}">{"".join(parts)}</svg>')


def coverage_strip_svg(levels, kind: str, title: str, named=None) -> str:
    """One row of the coverage matrix: a cell per column on the fixed scale (``None``: not
    run there), and a black dot on each column where the row's pitfall was named
    (``named``: one flag per column, or None for no dots)."""
    n_cols = len(levels)
    px = max(3, min(12, 720 // max(n_cols, 1)))
    svg = _cells_svg(levels, 1, n_cols, px, 1, GRID_SPAN,
                     f'class="cov-strip" data-kind="{_esc(kind)}" '
                     f'data-levels="{",".join("na" if v is None else str(v) for v in levels)}"',
                     title)
    if named is not None:
        dots = "".join(f'<circle cx="{i + 0.5}" cy="0.5" r="0.18" fill="#000"/>'
                       for i, nm in enumerate(named) if nm)
        svg = svg.replace("</svg>", dots + "</svg>")
    return svg


# --- the check report -----------------------------------------------------------------


def fmt_score(score) -> str:
    if isinstance(score, str):
        return score
    if score == 0:
        return "0"
    return f"{score:.3g}"


def _case_key(case_id: str):
    from resblock.errors import ResblockError
    from resblock.spec.cases import Case

    try:
        c = Case.from_id(case_id)
    except (ResblockError, ValueError):
        return ("?", (0, 0, 0, 0, case_id))
    return (c.family, (c.h * c.w, c.h, c.w, c.n, c.features, c.inputs, c.seed))


def grid_rows(cases: list[dict], linked: set | None = None) -> list[dict]:
    """The grid at a glance: one row per family, cells sorted by shape, batch, features.
    A cell links to its case when the case is on the page (``linked``; default all)."""
    rows: dict[str, list] = defaultdict(list)
    for case in cases:
        fam, key = _case_key(case["id"])
        rows[case.get("family", fam)].append((key, case))
    out = []
    for fam in sorted(rows):
        cells = []
        shape = None
        for key, case in sorted(rows[fam], key=lambda t: t[0]):
            st = case["status"]
            fill = (ERROR_COLOUR if st == "error" else SKIP_COLOUR if st == "skip" else
                    colour(level_of(case["worst_score"])))
            tip = f"{case['id']}: {st}"
            if st == "skip":  # outside the profile (spec 8.6): not run
                tip += f", {case['message']}"
            elif st != "error":
                tip += f", worst score {fmt_score(case['worst_score'])}"
            if case.get("pitfall"):
                tip += f", matches {case['pitfall']}"
            cells.append({"id": case["id"], "status": st, "fill": fill, "title": tip,
                          "linked": linked is None or case["id"] in linked,
                          "new_shape": shape is not None and key[:3] != shape})
            shape = key[:3]
        out.append({"family": fam, "cells": cells})
    return out


def _worst_aggregate(case) -> str:
    """"Q/limit (tensor)" of the case's worst aggregate test (spec 8.5), or "" when its
    golden file has none."""
    tensors = [t for t in case.get("tensors", ()) if "aggregate" in t]
    if not tensors:
        return ""
    t = max(tensors, key=lambda t: as_float(t["aggregate"]))
    return f"{fmt_score(t['aggregate'])} ({t['name']})"


def _sort_score(case) -> float:
    return as_float(case["worst_score"]) if case["status"] != "error" else math.inf


def report_context(doc: dict) -> dict:
    """Everything the template shows, derived from a check-report document."""
    from resblock.conformance.mistakes.pitfalls import lookup

    cases = [dict(c, details=c.get("details"), repro=c.get("repro", ""),
                  aggregate=_worst_aggregate(c)) for c in doc["cases"]]
    order = {"error": 0, "fail": 1, "xpass": 2, "xfail": 3, "pass": 4, "skip": 5}
    worst_first = sorted(cases, key=lambda c: (order[c["status"]], -_sort_score(c)))
    detailed = [c for c in worst_first if c.get("details")]
    for c in detailed:
        c["maps_html"] = "".join(tensor_maps_html(tm) for tm in c["details"]["maps"])
        c["stats_html"] = stats_html(c["details"]["stats"]) if c["details"].get("stats") else ""
        c["pitfall_row"] = _pitfall(lookup, c.get("pitfall"), doc.get("api", "functional"))
    undetailed = [c for c in worst_first if c["status"] in ("fail", "error", "xpass")
                  and not c.get("details")]
    passing = [c for c in cases if c["status"] in ("pass", "xpass")]
    scores = [as_float(c["worst_score"]) for c in passing]
    closest = sorted(passing, key=lambda c: -as_float(c["worst_score"]))[:CLOSEST]
    conforms = doc["verdict"] == "conforms"
    sections = ["summary", "grid", "cases"]
    if conforms:
        sections.append("margin")
    if detailed:
        sections.append("failures")
    return {
        "doc": doc,
        "conforms": conforms,
        "exit_status": 0 if conforms else 1,
        "grid": grid_rows(cases, {c["id"] for c in worst_first[:MAX_TABLE_ROWS]}),
        "detailed": detailed,
        "undetailed": undetailed[:50],
        "n_undetailed": len(undetailed),
        "table": worst_first[:MAX_TABLE_ROWS],
        "n_table_left": max(0, len(worst_first) - MAX_TABLE_ROWS),
        "histogram": histogram_svg(scores) if scores else "",
        "closest": closest,
        "statuses": Counter(c["status"] for c in cases),
        "pitfalls": [_pitfall(lookup, p["name"], doc.get("api", "functional"))
                     | {"cases": p["cases"]}
                     for p in doc.get("pitfalls", [])],
        "sections": sections,
        "fmt_score": fmt_score,
        "legend": legend_html(1, GRID_SPAN),
    }


def _pitfall(lookup, name, api: str = "functional"):
    if not name:
        return None
    try:
        p = lookup(name)
    except (KeyError, LookupError):
        return {"name": name, "title": name, "explanation": "", "fix": ""}
    return {"name": p.name, "title": p.title, "explanation": p.explanation,
            "fix": p.fix_for(api)}


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["safe_svg"] = lambda s: jinja2.utils.markupsafe.Markup(s)
    return env


def _template_source(name: str) -> str:
    return resources.files("resblock.conformance.reporting").joinpath("templates", name).read_text(
        encoding="utf-8")


def render_report(doc: dict, coverage: dict | None = None) -> str:
    """The HTML page of a check report (a ``check-report`` document), optionally with a
    coverage document's detection matrix appended."""
    ctx = report_context(doc)
    if coverage is not None:
        ctx["coverage"] = coverage_context(coverage)
        ctx["sections"].append("coverage")
    return _environment().get_template("report.html.j2").render(**ctx)


# --- the coverage matrix ---------------------------------------------------------------


def coverage_context(cov: dict) -> dict:
    """Rows of the detection matrix, each an SVG strip of one cell per case (or per case
    group when there are more than MAX_COVERAGE_COLUMNS cases)."""
    cases = cov["cases"]
    by_group = len(cases) > MAX_COVERAGE_COLUMNS
    if by_group:
        groups = sorted({c["group"] for c in cases}, key=str)
        col_of = {g: i for i, g in enumerate(groups)}
        columns = [str(g) for g in groups]
        cols = [col_of[c["group"]] for c in cases]
    else:
        columns = [c["id"] for c in cases]
        cols = list(range(len(cases)))
    n_cols = len(columns)
    rows = []
    for row in cov["rows"]:
        kind = row["kind"]
        # None: the row was not run on that case (it does not apply there).
        scores = [None if s is None else as_float(s) for s in row["scores"]]
        # A pitfall row should be caught (score > 1): a column shows its weakest
        # detection. A zoo row (a correct alternative algorithm) or the reference should
        # stay within the bound: a column shows its worst score.
        within = kind in ("reference", "zoo")
        pick = max if within else min
        cell = [None] * n_cols
        for col, s in zip(cols, scores, strict=True):
            if s is None:
                continue
            s = math.inf if math.isnan(s) else s
            cell[col] = s if cell[col] is None else pick(cell[col], s)
        lv = [None if s is None else level_of(s) for s in cell]
        named = row.get("named")
        run_on = [s for s in scores if s is not None]
        caught = sum(s > 1 for s in run_on)
        if within:
            summary = f"within the bound on {len(run_on) - caught}/{len(run_on)}"
            ok = caught == 0
        else:
            summary = f"caught on {caught}/{len(run_on)}"
            ok = caught > 0
            if named is not None:
                summary += f", named on {sum(map(bool, named))}/{len(run_on)}"
        svg = coverage_strip_svg(lv, kind, f"{row['name']} ({row['profile']})",
                                 None if by_group else named)
        rows.append({"kind": kind, "name": row["name"], "profile": row["profile"],
                     "summary": summary, "ok": ok, "svg": svg})
    families = [c.get("family", "") for c in cases]
    return {"goldens": cov.get("goldens", []), "profiles": cov.get("profiles", []),
            "rows": rows, "n_cases": len(cases), "by_group": by_group, "columns": columns,
            "families": Counter(families), "legend": legend_html(1, GRID_SPAN)}


def render_coverage(coverage: dict) -> str:
    """The HTML page of a coverage document (``kind: resblock-coverage``): the detection
    matrix of every pitfall, zoo and reference row over the cases."""
    if coverage.get("kind") != "resblock-coverage":
        from resblock.errors import HarnessError

        raise HarnessError(f"not a coverage document (kind {coverage.get('kind')!r}, "
                           "expected 'resblock-coverage')")
    ctx = {"coverage": coverage_context(coverage), "sections": ["coverage"]}
    return _environment().get_template("coverage.html.j2").render(**ctx)


# --- files ------------------------------------------------------------------------------


def write_html(text: str, path) -> None:
    """Write a page atomically (a reader never sees half a file)."""
    import os

    from resblock.conformance.reporting.report import write_text_atomic

    write_text_atomic(os.fspath(path), text)
