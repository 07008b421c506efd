"""Self-contained HTML pages: a check report (``resblock check --html``, ``resblock
report``) and the coverage command's detection matrix (:func:`render_coverage`). This
module owns page assembly: from the JSON a run already writes (schema ``check-report``;
its optional ``details`` carry the error maps, see :mod:`resblock.conformance.judging.details`),
so that a saved report renders the same later, it derives what each page shows, renders
the Jinja2 templates (the ``html`` extra, imported only when a page is rendered) and
writes the file. The page is one file: inline CSS, inline SVG (drawn by
:mod:`resblock.conformance.reporting.html_svg`), one small inline script that checks the page
itself, and a Content-Security-Policy that forbids every load from outside the file.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from importlib import resources

from resblock.conformance.reporting.html_svg import (
    ERROR_COLOUR,
    GRID_SPAN,
    NOT_RUN_COLOUR,  # noqa: F401 (re-exported: importable from here before the split)
    as_float,
    colour,
    coverage_strip_svg,
    histogram_svg,
    legend_html,
    level_of,
    stats_html,
    tensor_maps_html,
)

MAX_TABLE_ROWS = 2000  # cases listed in the all-cases table (worst first)
MAX_COVERAGE_COLUMNS = 240  # beyond this the coverage matrix shows one column per group
CLOSEST = 10  # a conforming run lists this many cases closest to the bound


def fmt_score(score) -> str:
    if isinstance(score, str):
        return score
    if score == 0:
        return "0"
    return f"{score:.3g}"


# --- the check report -----------------------------------------------------------------


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
            fill = ERROR_COLOUR if st == "error" else colour(level_of(case["worst_score"]))
            tip = f"{case['id']}: {st}"
            if st != "error":
                tip += f", worst score {fmt_score(case['worst_score'])}"
            if case.get("pitfall"):
                tip += f", matches {case['pitfall']}"
            cells.append({"id": case["id"], "status": st, "fill": fill, "title": tip,
                          "linked": linked is None or case["id"] in linked,
                          "new_shape": shape is not None and key[:3] != shape})
            shape = key[:3]
        out.append({"family": fam, "cells": cells})
    return out


def _sort_score(case) -> float:
    return as_float(case["worst_score"]) if case["status"] != "error" else math.inf


def report_context(doc: dict) -> dict:
    """Everything the template shows, derived from a check-report document."""
    from resblock.conformance.mistakes.pitfalls import lookup

    cases = [dict(c, details=c.get("details"), repro=c.get("repro", "")) for c in doc["cases"]]
    order = {"error": 0, "fail": 1, "xpass": 2, "xfail": 3, "pass": 4}
    worst_first = sorted(cases, key=lambda c: (order[c["status"]], -_sort_score(c)))
    detailed = [c for c in worst_first if c.get("details")]
    for c in detailed:
        c["maps_html"] = "".join(tensor_maps_html(tm) for tm in c["details"]["maps"])
        c["stats_html"] = stats_html(c["details"]["stats"]) if c["details"].get("stats") else ""
        c["pitfall_row"] = _pitfall(lookup, c.get("pitfall"))
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
        "pitfalls": [_pitfall(lookup, p["name"]) | {"cases": p["cases"]}
                     for p in doc.get("pitfalls", [])],
        "sections": sections,
        "fmt_score": fmt_score,
        "legend": legend_html(1, GRID_SPAN),
    }


def _pitfall(lookup, name):
    if not name:
        return None
    try:
        p = lookup(name)
    except (KeyError, LookupError):
        return {"name": name, "title": name, "explanation": "", "fix": ""}
    return {"name": p.name, "title": p.title, "explanation": p.explanation, "fix": p.fix}


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
