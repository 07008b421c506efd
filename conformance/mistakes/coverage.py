"""The detection matrix: which golden case rejects which mistake, and how close every
correct algorithm comes to the bound (``resblock coverage``).

For every case of a golden set and every profile it runs every pitfall twin
(:mod:`resblock.conformance.mistakes.variants`), every correct algorithm of the zoo
(:mod:`resblock.conformance.mistakes.zoo`) and the stored Flax reference, scores each against the
case's bounds, and for each rejected twin runs the same diagnosis ``resblock check``
runs, so "named" means the checker would name it. The default grid is chosen from this
matrix (spec/DESIGN.md), and SPEC.md's coverage table is its Markdown rendering.

Pure computation over :class:`GoldenCase` objects; the CLI prints or writes it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from resblock.conformance.mistakes.diagnose import best_match, match_scores, twin_outputs
from resblock.conformance.mistakes.pitfalls import lookup, needs
from resblock.spec import tolerance
from resblock.spec.constants import STAT_NAMES


@dataclass(frozen=True)
class _Bounded:
    """A golden case with its bounds for one profile computed once (duck-types the
    ``reference``/``bound`` methods :func:`tolerance.worst_score` uses)."""

    gc: object
    bounds: dict

    @property
    def case(self):
        return self.gc.case

    def reference(self, name):
        return self.gc.reference(name)

    def bound(self, name, prof):
        key = (name, prof.name)
        if key not in self.bounds:
            self.bounds[key] = self.gc.bound(name, prof)
        return self.bounds[key]

    def __getattr__(self, name):  # x, params, batch_stats_in, arrays, ...
        return getattr(self.gc, name)


def _stored_reference(gc):
    return gc.arrays["y"], {n: gc.arrays[f"batch_stats_out/{n}"] for n in STAT_NAMES}


def case_rows(gc, profiles, zoo_names=None) -> list[dict]:
    """Rows of the matrix for one case: ``{kind, name, profile, score, named}``."""
    from resblock.conformance.mistakes import zoo
    from resblock.conformance.mistakes.diagnose import diagnose_error

    b = _Bounded(gc, {})
    raised: dict = {}
    twins = twin_outputs(gc, raised)
    algs = [a for a in zoo.ZOO if zoo_names is None or a.name in zoo_names]
    outputs = {}
    for a in algs:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            y, st = zoo.make_forward(a)(gc.x, gc.params, gc.batch_stats_in)
        outputs[a.name] = (y, {n: st[n.split("/")[0]][n.split("/")[1]] for n in STAT_NAMES})
    rows = []
    inference_twins = None
    if gc.has_inference:
        from resblock.conformance.mistakes.variants_inference import twin_outputs as inf_twins

        with np.errstate(all="ignore"):
            inference_twins = inf_twins(gc)

    def scored(kind, name, pname, y, st, prof) -> dict:
        """A row scored as ``resblock check`` judges: per element and per tensor; the
        aggregate test alone rejects it when only the second exceeds 1."""
        element = tolerance.worst_score(b, y, st, prof)
        score = tolerance.worst_score(b, y, st, prof, aggregate=True)
        return {"kind": kind, "name": name, "profile": pname, "score": score,
                "named": None, "aggregate_only": element <= 1.0 < score}

    for pname in profiles:
        prof = tolerance.profile(pname)
        # A case outside a storage profile (spec 8.6) is not run there: its rows stay
        # empty (not applicable), so no twin is credited with a rejection on it.
        if gc.has_inference and gc.outside_profile(prof, inference=True) is None:
            rows += inference_rows(gc, prof, inference_twins)
        if gc.outside_profile(prof) is not None:
            continue
        ry, rs = _stored_reference(gc)
        rows.append(scored("reference", "flax", pname, ry, rs, prof))
        for name, (y, st) in outputs.items():
            rows.append(scored("zoo", name, pname, y, st, prof))
        for name, (y, st) in twins.items():
            row = scored("pitfall", name, pname, y, st, prof)
            if row["score"] > 1.0:
                row["named"] = best_match(row["score"], match_scores(b, y, st, prof,
                                                                     twins)) == name
            rows.append(row)
        for name, message in raised.items():  # a refusal: an error, never a pass
            rows.append({"kind": "pitfall", "name": name, "profile": pname, "score": np.inf,
                         "named": diagnose_error(gc, message, raised) == name,
                         "aggregate_only": False})
        if gc.has_grad and not prof.stores_low:  # no storage budgets for gradients yet
            rows += backward_rows(gc, prof)
    return rows


def backward_rows(gc, prof) -> list[dict]:
    """Rows of a case with gradients (spec section 10): the stored ``jax.vjp`` reference
    (``reference flax_vjp``) and every backward pitfall's twin, scored against the oracle
    backward's bounds and diagnosed as ``resblock check --api backward`` does."""
    from resblock.conformance.mistakes.variants_backward import backward_score, twin_gradients
    from resblock.golden.store import grad_path
    from resblock.spec.error_model_backward import GRAD_TENSORS

    ref = {n: gc.arrays[grad_path(n)] for n in GRAD_TENSORS}
    score = backward_score(gc, ref, prof, aggregate=True)
    rows = [{"kind": "reference", "name": "flax_vjp", "profile": prof.name, "score": score,
             "named": None, "aggregate_only": backward_score(gc, ref, prof) <= 1.0 < score}]
    twins = twin_gradients(gc)
    for name, grads in twins.items():
        score = backward_score(gc, grads, prof, aggregate=True)
        named = None
        if score > 1.0:
            scores = {k: (s, s) for k, s in ((k, backward_score(gc, grads, prof, t))
                                             for k, t in twins.items())}
            named = best_match(score, scores) == name
        rows.append({"kind": "pitfall", "name": name, "profile": prof.name, "score": score,
                     "named": named,
                     "aggregate_only": backward_score(gc, grads, prof) <= 1.0 < score})
    return rows


def inference_rows(gc, prof, twins: dict | None = None) -> list[dict]:
    """Rows of a case with the inference block (spec section 12): the stored Flax
    ``use_running_average=True`` output (``reference flax_inference``) and every inference
    pitfall's twin, scored against the inference oracle's bounds and diagnosed as
    ``resblock check --api inference`` does."""
    from resblock.conformance.mistakes.variants_inference import (
        diagnose_inference,
        inference_score,
        twin_outputs,
    )

    def row(kind, name, y, named=None):
        score = inference_score(gc, y, prof, aggregate=True)
        return {"kind": kind, "name": name, "profile": prof.name, "score": score,
                "named": named, "aggregate_only": inference_score(gc, y, prof) <= 1.0 < score}

    rows = [row("reference", "flax_inference", gc.arrays["inference/y"])]
    if twins is None:
        with np.errstate(all="ignore"):
            twins = twin_outputs(gc)
    for name, y in twins.items():
        r = row("pitfall", name, y)
        if r["score"] > 1.0:
            with np.errstate(all="ignore"):
                r["named"] = diagnose_inference(gc, y, prof, twins) == name
        rows.append(r)
    return rows


def coverage(golden_paths, profiles=tolerance.PROFILES, zoo_names=None, progress=None) -> dict:
    """The coverage document (``kind: resblock-coverage``) of golden files."""
    from resblock.conformance.mistakes.pitfalls import PITFALLS
    from resblock.conformance.mistakes.zoo import ZOO
    from resblock.golden.reader import GoldenFile

    cases, goldens, per_case = [], [], []
    for path in golden_paths:
        with GoldenFile(path) as gf:
            goldens.append({"path": str(path), "content_sha256": gf.metadata["content_sha256"]})
            for gc in gf.iter_cases():
                cases.append({"id": gc.id, "family": gc.case.family, "group": gc.entry["group"]})
                per_case.append({(r["kind"], r["name"], r["profile"]): r
                                 for r in case_rows(gc, profiles, zoo_names)})
                if progress is not None:
                    progress(len(cases), gc.id)
    keys = [("reference", "flax")]
    keys += [("zoo", a.name) for a in ZOO if zoo_names is None or a.name in zoo_names]
    keys += [("pitfall", p.name) for p in PITFALLS]
    backward = set()
    if any(k[0] == "reference" and k[1] == "flax_vjp" for pc in per_case for k in pc):
        from resblock.conformance.mistakes.variants_backward import BACKWARD_PITFALLS

        backward = {("reference", "flax_vjp")} | {("pitfall", p.name)
                                                  for p in BACKWARD_PITFALLS}
        keys.insert(1, ("reference", "flax_vjp"))
        keys += [("pitfall", p.name) for p in BACKWARD_PITFALLS]
    if any(k[0] == "reference" and k[1] == "flax_inference" for pc in per_case for k in pc):
        from resblock.conformance.mistakes.variants_inference import INFERENCE_PITFALLS

        keys.insert(1, ("reference", "flax_inference"))
        keys += [("pitfall", p.name) for p in INFERENCE_PITFALLS]
    rows = []
    for kind, name in keys:
        for pname in profiles:
            got = [pc.get((kind, name, pname)) for pc in per_case]
            if (kind, name) in backward and tolerance.profile(pname).stores_low:
                continue  # the backward has no storage budgets yet: no row
            row = {"kind": kind, "name": name, "profile": pname,
                   "scores": [None if r is None else _json_float(r["score"]) for r in got]}
            if kind == "pitfall":
                row["named"] = [bool(r and r["named"]) for r in got]
            row["aggregate_only"] = [bool(r and r["aggregate_only"]) for r in got]
            rows.append(row)
    return {"kind": "resblock-coverage", "goldens": goldens, "profiles": list(profiles),
            "cases": cases, "rows": rows}


def _json_float(v: float):
    return float(v) if np.isfinite(v) else "inf"


def _num(v) -> float:
    return np.inf if v == "inf" else float(v)


@dataclass(frozen=True)
class PitfallSummary:
    name: str
    profile: str
    applicable: int
    rejected: int
    named: int
    by_family: dict  # family -> (rejected, applicable)
    by_aggregate: int = 0  # rejected by the aggregate test alone (spec 8.5)


def pitfall_summaries(cov: dict) -> list[PitfallSummary]:
    fams = [c["family"] for c in cov["cases"]]
    out = []
    for r in cov["rows"]:
        if r["kind"] != "pitfall":
            continue
        by: dict = {}
        for fam, s in zip(fams, r["scores"], strict=True):
            if s is None:
                continue
            rej, app = by.get(fam, (0, 0))
            by[fam] = (rej + (_num(s) > 1.0), app + 1)
        scores = [s for s in r["scores"] if s is not None]
        out.append(PitfallSummary(
            r["name"], r["profile"], len(scores), sum(_num(s) > 1.0 for s in scores),
            sum(r["named"]), by, sum(r.get("aggregate_only", ()))))
    return out


def algorithm_summaries(cov: dict) -> list[dict]:
    """Worst and median score (and the worst case) of the reference and zoo rows, over the
    cases where they ran (``skipped``: those outside the profile, spec 8.6)."""
    out = []
    for r in cov["rows"]:
        if r["kind"] == "pitfall":
            continue
        ran = [i for i, v in enumerate(r["scores"]) if v is not None]
        if not ran:
            continue
        s = np.array([_num(r["scores"][i]) for i in ran])
        i = int(np.argmax(s))
        slack = 1.0 / s[s > 0] if np.any(s > 0) else np.array([np.inf])
        out.append({"kind": r["kind"], "name": r["name"], "profile": r["profile"],
                    "worst": float(s[i]), "worst_case": cov["cases"][ran[i]]["id"],
                    "median": float(np.median(s)), "median_slack": float(np.median(slack)),
                    "min_slack": float(np.min(slack)), "conforming": int(np.sum(s <= 1.0)),
                    "cases": len(s), "skipped": len(r["scores"]) - len(s)})
    return out


def text_report(cov: dict) -> str:
    """The matrix summarised for a terminal."""
    profiles = cov["profiles"]
    lines = [f"detection matrix: {', '.join(g['path'] for g in cov['goldens'])} "
             f"({len(cov['cases'])} cases); profiles {', '.join(profiles)}",
             "", "mistakes: cases rejecting / named (of applicable cases), per profile; "
             "[A] the cases only the aggregate test (spec 8.5) rejects, under fp32"]
    summ = {(s.name, s.profile): s for s in pitfall_summaries(cov)}
    names = list(dict.fromkeys(s.name for s in summ.values()))
    fams = sorted({c["family"] for c in cov["cases"]})
    head = f"  {'pitfall':32s}" + "".join(f"{p:>15s}" for p in profiles)
    head += "   fp32 by family (" + "/".join(fams) + ")"
    lines.append(head)
    for n in names:
        cells = []
        for p in profiles:
            s = summ.get((n, p))
            cells.append("-" if s is None else
                         f"{s.rejected:>4d}/{s.named:<3d}of {s.applicable:<3d}")
        fp = summ.get((n, "fp32"))
        fam = "/".join(f"{fp.by_family.get(f, (0, 0))[0]}" for f in fams) if fp else ""
        if fp and fp.by_aggregate:
            fam += f" [{fp.by_aggregate} by the aggregate only]"
        weak = ("  <- fewer than 2 under fp32"
                if fp and min(fp.rejected, fp.named) < min(2, fp.applicable) else "")
        if fp and fp.applicable == 0:
            weak = f"  (no case here can show it: it needs {needs(lookup(n))})"
        lines.append(f"  {n:32s}" + "".join(f"{c:>15s}" for c in cells) + f"   {fam}{weak}")
    lines += ["", "mistakes each profile lets through (no case rejects them):"]
    for p in profiles:
        through = [n for n in names if (n, p) in summ and summ[(n, p)].applicable
                   and not summ[(n, p)].rejected]
        lines.append(f"  {p:10s} {', '.join(through) if through else 'none'}")
    lines += ["", "correct algorithms: worst score (case) / median; slack = bound / error"]
    for a in algorithm_summaries(cov):
        flag = "" if a["worst"] <= 1.0 else "  <- REJECTED"
        if a["skipped"]:
            flag += f" ({a['skipped']} cases outside the profile)"
        lines.append(f"  {a['kind']:9s} {a['name']:28s} {a['profile']:9s} worst {a['worst']:.3g} "
                     f"({a['worst_case']}), median {a['median']:.3g}; median slack "
                     f"{a['median_slack']:.3g}x, min {a['min_slack']:.3g}x{flag}")
    return "\n".join(lines)


def markdown_table(cov: dict) -> str:
    """The coverage table of the design document: per pitfall, the cases rejecting it
    under fp32 per family (of those where it applies), how many of them name it, and
    the cases rejecting it under the other profiles evaluated."""
    fams = sorted({c["family"] for c in cov["cases"]})
    others = [p for p in cov["profiles"] if p != "fp32"]
    summ = {(s.name, s.profile): s for s in pitfall_summaries(cov)}
    lines = ["| pitfall | " + " | ".join(f"{f} (fp32)" for f in fams) + " | named (fp32) | "
             + "aggregate only (fp32) | " + " | ".join(others) + (" |" if others else "|"),
             "|---|" + "---|" * (len(fams) + 2 + len(others))]
    for (name, prof), s in summ.items():
        if prof != "fp32":
            continue
        cells = [f"{s.by_family[f][0]}/{s.by_family[f][1]}" if f in s.by_family else "-"
                 for f in fams]
        cells.append(f"{s.named}/{s.applicable}")
        cells.append(str(s.by_aggregate))
        cells += [f"{summ[(name, p)].rejected}/{summ[(name, p)].applicable}"
                  if (name, p) in summ else "-" for p in others]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problems(cov: dict, min_cases: int = 2) -> list[str]:
    """What makes a golden set unfit as a gate: a correct algorithm rejected anywhere
    (a false reject), or a pitfall rejected and named by fewer than ``min_cases`` of the
    cases where it applies under ``fp32``."""
    from resblock.conformance.mistakes.zoo import ZOO_BY_NAME

    out = []
    for a in algorithm_summaries(cov):
        expect = "conforms" if a["kind"] == "reference" else ZOO_BY_NAME[a["name"]].expect
        if expect == "conforms" and a["worst"] > 1.0:
            out.append(f"correct {a['kind']} {a['name']} rejected under {a['profile']}: "
                       f"score {a['worst']:.3g} on {a['worst_case']}")
    for r in cov["rows"]:
        if r["kind"] != "pitfall" or r["profile"] != "fp32":
            continue
        applicable = sum(s is not None for s in r["scores"])
        both = sum(1 for s, n in zip(r["scores"], r["named"], strict=True)
                   if s is not None and _num(s) > 1.0 and n)
        if both < min(min_cases, applicable):
            out.append(f"pitfall {r['name']}: rejected and named by {both} case(s) under fp32, "
                       f"fewer than {min(min_cases, applicable)}")
    return out
