"""Compare one case's results with its float64 oracle under a tolerance profile.

Pure: arrays in, :class:`TensorReport` records out (pytest-regressions' report fields:
count and share out of bound, max abs and rel error, the worst element with expected,
got and bound, in the implementation's own layout).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from resblock.conformance.running.adapters import user_index
from resblock.spec import tolerance
from resblock.spec.constants import STAGES, STAT_NAMES


@dataclass(frozen=True)
class TensorReport:
    name: str
    ok: bool
    size: int
    n_bad: int
    max_abs: float
    max_rel: float
    worst_score: float
    worst_index: tuple
    expected: float
    got: float
    bound: float

    @property
    def share_bad(self) -> float:
        return self.n_bad / self.size if self.size else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        d["share_bad"] = self.share_bad
        for k in ("max_abs", "max_rel", "worst_score"):
            d[k] = _finite(d[k])
        d["got"] = _finite(d["got"])
        return d


def _finite(v: float):
    """JSON has no inf/nan: report them as strings."""
    return v if np.isfinite(v) else str(v)


@dataclass
class CaseResult:
    id: str
    family: str
    status: str  # pass | fail | error | xfail | xpass
    message: str = ""
    tensors: list[TensorReport] = field(default_factory=list)
    pitfall: str | None = None
    stage: str | None = None
    xfail_reason: str | None = None
    seconds: float = 0.0

    @property
    def worst_score(self) -> float:
        return max((t.worst_score for t in self.tensors), default=0.0)

    @property
    def failing_tensors(self) -> list[TensorReport]:
        return [t for t in self.tensors if not t.ok]


def compare_tensor(name, got, ref, bound, layout="nhwc") -> TensorReport:
    """Report of one tensor against its float64 reference under per-element ``bound``."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), ref.shape)
    sc = tolerance.scores(got, ref, b)
    err = np.abs(got - ref)
    err = np.where(np.isnan(err), np.inf, err)
    flat = int(np.argmax(sc))
    idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
    with np.errstate(all="ignore"):
        rel = np.where(ref != 0, err / np.abs(ref), np.where(err == 0, 0.0, np.inf))
    return TensorReport(
        name=name,
        ok=bool(np.all(sc <= 1.0)),
        size=int(ref.size),
        n_bad=int(np.count_nonzero(~(sc <= 1.0))),
        max_abs=float(np.max(err)) if err.size else 0.0,
        max_rel=float(np.max(rel)) if rel.size else 0.0,
        worst_score=float(sc.flat[flat]),
        worst_index=user_index(idx, layout) if name == "output" else idx,
        expected=float(ref[idx]),
        got=float(got[idx]),
        bound=float(b[idx]),
    )


def element_scores(gc, name: str, got, prof) -> np.ndarray:
    """Per-element scores ``|got - ref| / bound`` of one tensor of a golden case.

    ``name``: "output", a stage ("conv1" ... "sum") or a stat ("BatchNorm_0/mean", ...);
    ``got`` in NHWC for activations. ``inf`` where ``got`` is NaN or Inf.
    """
    return tolerance.scores(got, gc.reference(name), gc.bound(name, prof))


def compare_case(gc, y, stats, prof, layout="nhwc") -> list[TensorReport]:
    """Reports for the output and (when given) the four running-stat vectors."""
    reports = [compare_tensor("output", y, gc.reference("output"), gc.bound("output", prof),
                              layout)]
    if stats is not None:
        for name in STAT_NAMES:
            reports.append(compare_tensor(name, stats[name], gc.reference(name),
                                          gc.bound(name, prof)))
    return reports


def compare_backward(gc, grads: dict, prof, layout="nhwc") -> list[TensorReport]:
    """Reports for ``x_bar`` and every parameter gradient (flat NHWC/HWIO ``grads``),
    named ``x_bar`` and ``<Layer>/<leaf>_bar``."""
    out = []
    for name, got in grads.items():
        label = "x_bar" if name == "x" else f"{name}_bar"
        rep = compare_tensor(label, got, gc.grad_reference(name), gc.grad_bound(name, prof))
        if name == "x":
            rep = replace(rep, worst_index=user_index(rep.worst_index, layout))
        out.append(rep)
    return out


def first_diverging_stage(gc, intermediates: dict, prof) -> str | None:
    """The first stage (conv1, bn1, relu1, conv2, bn2, sum) out of bound, if any."""
    for stage in STAGES:
        if stage == "output" or stage not in intermediates:
            continue
        ref = gc.reference(stage)
        got = np.asarray(intermediates[stage], dtype=np.float64)
        if got.shape != ref.shape:
            return stage
        if not np.all(tolerance.scores(got, ref, gc.bound(stage, prof)) <= 1.0):
            return stage
    return None
