"""``resblock diff A B``: do two golden sets say the same thing?

Inputs, parameters and incoming stats must be bit-identical on every common case (they
are derived on the CPU backend from the case's fields; when they differ the metadata
usually says why: another JAX version or PRNG configuration). Outputs and updated
stats of each set are judged with the spec's tolerance rule against the other set's
float64 oracle, and the two oracles must agree with each other. This is how a set
regenerated on a GPU is accepted against the committed CPU set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from resblock.generator.engine import stats_view
from resblock.golden.store import INPUT_ARRAYS
from resblock.spec import tolerance


@dataclass
class CaseDiff:
    id: str
    inputs_identical: bool
    score_a: float  # A's float32 results against B's oracle
    score_b: float  # B's float32 results against A's oracle
    oracle_score: float  # B's oracle against A's oracle
    first_input_difference: str | None = None

    @property
    def worst(self) -> float:
        return max(self.score_a, self.score_b, self.oracle_score)

    @property
    def ok(self) -> bool:
        return self.inputs_identical and self.worst <= 1.0


@dataclass
class DiffResult:
    a: str
    b: str
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    cases: list[CaseDiff] = field(default_factory=list)
    input_reason: str | None = None
    profile: str = "fp32"
    subset: bool = False  # cases missing on either side are expected (``--subset``)

    @property
    def missing(self) -> bool:
        """Cases of one file that the other lacks, and ``--subset`` was not given."""
        return not self.subset and bool(self.only_a or self.only_b)

    @property
    def agree(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases) and not self.missing


def _score(got, ref, prof) -> float:
    """Case ``got``'s float32 results against case ``ref``'s oracle and bounds."""
    return tolerance.worst_score(ref, got.arrays["y"], stats_view(got.arrays, "batch_stats_out"),
                                 prof)


def _oracle_score(b, a, prof) -> float:
    """Case ``b``'s float64 oracle against case ``a``'s, under ``a``'s bounds."""
    return tolerance.worst_score(a, b.arrays["oracle/y"],
                                 stats_view(b.arrays, "oracle/batch_stats_out"), prof)


def input_difference_reason(meta_a: dict, meta_b: dict) -> str:
    ea, eb = meta_a["environment"], meta_b["environment"]
    pa, pb = meta_a["computation"]["prng"], meta_b["computation"]["prng"]
    reasons = []
    if (ea["jax"], ea["jaxlib"]) != (eb["jax"], eb["jaxlib"]):
        reasons.append(f"different JAX versions ({ea['jax']} vs {eb['jax']})")
    if pa != pb:
        reasons.append(f"different PRNG configuration ({pa} vs {pb})")
    if meta_a["spec_version"] != meta_b["spec_version"]:
        reasons.append(f"different spec versions ({meta_a['spec_version']} vs "
                       f"{meta_b['spec_version']})")
    return "; ".join(reasons) or ("same JAX version and PRNG configuration: the inputs should "
                                  "be identical; one file was derived differently (a bug)")


def diff_files(path_a, path_b, profile: str = "fp32", subset: bool = False) -> DiffResult:
    """Compare two golden files case by case.

    ``subset``: cases present in one file only are listed but do not prevent agreement
    (default: False, they do; a set missing cases says nothing about them).
    """
    from resblock.errors import GoldenFormatError
    from resblock.golden.reader import GoldenFile

    prof = tolerance.profile(profile)
    res = DiffResult(str(path_a), str(path_b), profile=profile, subset=subset)
    with GoldenFile(path_a) as fa, GoldenFile(path_b) as fb:
        for f in (fa, fb):
            problems = f.hash_problems()
            if problems:
                raise GoldenFormatError(f"{f.path}: {problems[0]}")
        ids_a, ids_b = set(fa.ids), set(fb.ids)
        res.only_a = sorted(ids_a - ids_b)
        res.only_b = sorted(ids_b - ids_a)
        for cid in sorted(ids_a & ids_b, key=lambda i: (fa.entry(i)["group"], i)):
            ca, cb = fa.case(cid), fb.case(cid)
            first = next((n for n in INPUT_ARRAYS
                          if not np.array_equal(ca.arrays[n], cb.arrays[n])), None)
            res.cases.append(CaseDiff(
                id=cid, inputs_identical=first is None,
                score_a=_score(ca, cb, prof), score_b=_score(cb, ca, prof),
                oracle_score=_oracle_score(cb, ca, prof),
                first_input_difference=first))
        if any(not c.inputs_identical for c in res.cases):
            res.input_reason = input_difference_reason(fa.metadata, fb.metadata)
    return res


def format_diff(res: DiffResult, max_cases: int = 10) -> str:
    lines = [f"resblock diff {res.a} {res.b} (profile {res.profile})",
             f"  {len(res.cases)} common cases, {len(res.only_a)} only in A, "
             f"{len(res.only_b)} only in B"]
    for label, ids in (("only in A", res.only_a), ("only in B", res.only_b)):
        if ids:
            lines.append(f"  {label}: " + ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
    bad_inputs = [c for c in res.cases if not c.inputs_identical]
    if bad_inputs:
        lines.append(f"  inputs differ in {len(bad_inputs)} cases (first: {bad_inputs[0].id}, "
                     f"{bad_inputs[0].first_input_difference}): {res.input_reason}")
    lines.append("  worst cases (score > 1 is out of tolerance):")
    for c in sorted(res.cases, key=lambda c: -c.worst)[:max_cases]:
        lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {c.id:40s} A-vs-B-oracle {c.score_a:9.3g}"
                     f"  B-vs-A-oracle {c.score_b:9.3g}  oracles {c.oracle_score:9.3g}")
    worst_b = max((c.score_b for c in res.cases), default=0.0)
    if worst_b > 1.0 and not bad_inputs:
        lines.append("  B's float32 results are out of tolerance against A's oracle: was B "
                     "computed with reduced-precision (TF32/bf16) convolutions?")
    if res.missing:
        lines.append(f"  {len(res.only_a)} cases only in A and {len(res.only_b)} only in B were "
                     "not compared; pass --subset if one set is meant to hold part of the other")
    if not res.cases:
        lines.append("  no case in common: nothing was compared")
    lines.append("AGREE" if res.agree else "DISAGREE")
    return "\n".join(lines)
