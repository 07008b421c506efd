"""Compare one case's results with its float64 oracle under a tolerance profile.

Pure: arrays in, :class:`TensorReport` records out (pytest-regressions' report fields:
count and share out of bound, max abs and rel error, the worst element with expected,
got and bound, in the implementation's own layout), and each tensor's aggregate test
(spec section 8.5: its mean squared normalised error against the threshold for its
channel count), where the golden file has the spreads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from resblock.conformance.running.adapters import user_index
from resblock.golden.store import grad_path, tensor_path
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
    # The aggregate test (spec 8.5): Q over its limit (passes when <= 1), Q and the limit;
    # None for a golden file without spreads (format 3), which has no such test.
    aggregate: float | None = None
    aggregate_q: float | None = None
    aggregate_limit: float | None = None

    @property
    def share_bad(self) -> float:
        return self.n_bad / self.size if self.size else 0.0

    @property
    def score(self) -> float:
        """The tensor's score under both tests: its worst element's or its aggregate's."""
        return max(self.worst_score, self.aggregate or 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        d["share_bad"] = self.share_bad
        for k in ("max_abs", "max_rel", "worst_score", "aggregate", "aggregate_q"):
            if d[k] is not None:
                d[k] = _finite(d[k])
        d["got"] = _finite(d["got"])
        if self.aggregate is None:
            for k in ("aggregate", "aggregate_q", "aggregate_limit"):
                del d[k]
        return d


def _finite(v: float):
    """JSON has no inf/nan: report them as strings."""
    return v if np.isfinite(v) else str(v)


@dataclass
class CaseResult:
    id: str
    family: str
    status: str  # pass | fail | error | xfail | xpass | skip (outside the profile)
    message: str = ""
    tensors: list[TensorReport] = field(default_factory=list)
    pitfall: str | None = None
    stage: str | None = None
    xfail_reason: str | None = None
    seconds: float = 0.0

    @property
    def worst_score(self) -> float:
        """The worst score of the case: per element or per tensor (aggregate test)."""
        return max((t.score for t in self.tensors), default=0.0)

    @property
    def failing_tensors(self) -> list[TensorReport]:
        return [t for t in self.tensors if not t.ok]


@dataclass(frozen=True)
class Spread:
    """What the aggregate test of one tensor needs: its spreads, the profile's
    ``u_conv`` and the case's channel count, and under a profile that stores values in a
    low type its storage spread and ``u_store``."""

    sigma: np.ndarray
    sigma_conv: np.ndarray
    u_conv: float
    channels: int
    sigma_store: np.ndarray | None = None
    u_store: float = 0.0


def spread_of(gc, path: str, prof) -> Spread | None:
    """The :class:`Spread` of the tensor stored at ``path`` ("y", "grad/x", ...) of a
    golden case, or None when the file has no spreads."""
    if not gc.has_spreads:
        return None
    if path.startswith("grad/"):
        from resblock.golden.store import no_store_backward

        no_store_backward(prof)
    sigma, sigma_conv, sigma_store = gc.spread(path, prof)
    return Spread(sigma, sigma_conv, prof.u_conv, gc.case.features, sigma_store,
                  prof.u_store)


def compare_tensor(name, got, ref, bound, layout="nhwc", spread: Spread | None = None
                   ) -> TensorReport:
    """Report of one tensor against its float64 reference under per-element ``bound``
    and, with ``spread``, the aggregate test."""
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
    agg = q = limit = None
    if spread is not None:
        q = tolerance.aggregate_statistic(got, ref, spread.sigma, spread.sigma_conv,
                                          spread.u_conv, spread.sigma_store, spread.u_store)
        limit = tolerance.aggregate_threshold(spread.channels)
        agg = q / limit
    return TensorReport(
        name=name,
        ok=bool(np.all(sc <= 1.0)) and (agg is None or agg <= 1.0),
        size=int(ref.size),
        n_bad=int(np.count_nonzero(~(sc <= 1.0))),
        max_abs=float(np.max(err)) if err.size else 0.0,
        max_rel=float(np.max(rel)) if rel.size else 0.0,
        worst_score=float(sc.flat[flat]),
        worst_index=user_index(idx, layout) if name == "output" else idx,
        expected=float(ref[idx]),
        got=float(got[idx]),
        bound=float(b[idx]),
        aggregate=agg,
        aggregate_q=q,
        aggregate_limit=limit,
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
                              layout, spread_of(gc, tensor_path("output"), prof))]
    if stats is not None:
        for name in STAT_NAMES:
            reports.append(compare_tensor(name, stats[name], gc.reference(name),
                                          gc.bound(name, prof), spread=spread_of(
                                              gc, tensor_path(name), prof)))
    return reports


def compare_backward(gc, grads: dict, prof, layout="nhwc") -> list[TensorReport]:
    """Reports for ``x_bar`` and every parameter gradient (flat NHWC/HWIO ``grads``),
    named ``x_bar`` and ``<Layer>/<leaf>_bar``."""
    out = []
    for name, got in grads.items():
        label = "x_bar" if name == "x" else f"{name}_bar"
        rep = compare_tensor(label, got, gc.grad_reference(name), gc.grad_bound(name, prof),
                             spread=spread_of(gc, grad_path(name), prof))
        if name == "x":
            rep = replace(rep, worst_index=user_index(rep.worst_index, layout))
        out.append(rep)
    return out


def compare_inference(gc, y, prof, layout="nhwc") -> list[TensorReport]:
    """The report of the inference output (NHWC ``y``) against the inference oracle,
    with its per-element bounds and its aggregate test (spec section 12.4)."""
    from resblock.golden.store import inference_path

    path = inference_path("output")
    return [compare_tensor("output", y, gc.inference_reference(), gc.inference_bound(prof),
                           layout, spread_of(gc, path, prof))]


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
