"""The conformance rule (spec section 8), as pure NumPy functions.

Per element of a checked tensor of one case (the output, a stage, or one running-stat
vector)::

    bound = max(budget + u_conv * budget_conv, tiny)
    score = |got - ref| / bound          (the element conforms when score <= 1)

and over each whole tensor (spec section 8.3; TOSA's compliance check of dot products
bounds the sum of squared normalised errors the same way)::

    Q = mean((got - ref)^2 / (sigma^2 + (u_conv * sigma_conv)^2))
    Q <= 1 + 2 sqrt(x / F) + 2 x / F     (F channels, x = ln 2^40)

``ref`` is the float64 oracle; ``budget`` and ``budget_conv`` are the per-element
budgets of the float32 error model (:mod:`resblock.spec.error_model`), stored in every
golden file next to the oracle, and ``sigma``/``sigma_conv`` the spreads of
:mod:`resblock.spec.error_spread` (a correct port's root-mean-square error per element);
``u_conv`` is the profile's unit roundoff of the
convolution inputs (0 for ``fp32``, 2^-11 for ``tf32``, 2^-8 for ``bf16``). NaN or Inf
in ``got`` scores ``inf``; so does NaN anywhere in the inputs of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec.constants import STAT_NAMES, load

PROFILES: tuple[str, ...] = tuple(load()["tolerance"]["profiles"])


@dataclass(frozen=True)
class Profile:
    """A tolerance profile: its name and the unit roundoff of convolution inputs."""

    name: str
    u: float
    u_conv: float


def profile(name: str = "fp32") -> Profile:
    """The named tolerance profile from the spec constants."""
    tol = load()["tolerance"]
    if name not in tol["profiles"]:
        raise KeyError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return Profile(name=name, u=tol["unit_roundoff"],
                   u_conv=tol["profiles"][name]["conv_unit_roundoff"])


def scores(got, ref, bound) -> np.ndarray:
    """``|got - ref| / bound`` per element (``inf`` where got is NaN or Inf)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.abs(got - ref) / np.asarray(bound, dtype=np.float64)
    return np.where(np.isfinite(got) & ~np.isnan(s), s, np.inf)


def max_score(got, ref, bound) -> float:
    """Worst score of one tensor; NaN never hides (unlike Python's ``max``)."""
    s = scores(got, ref, bound)
    return float(np.max(s)) if s.size else 0.0


AGGREGATE_LOG: float = load()["tolerance"]["aggregate"]["false_reject_log"]


def aggregate_threshold(channels: int) -> float:
    """The largest mean squared normalised error a tensor with ``channels`` channels may
    have. If a correct port's normalised errors were Gaussian with variance at most 1
    (the spread is an upper estimate of each element's root-mean-square error) and
    independent between channels, ``F Q`` would be at most a chi-square variable with
    ``F`` degrees of freedom, and Laurent and Massart's tail bound gives
    ``P(F Q >= F + 2 sqrt(F x) + 2 x) <= exp(-x)``: with ``x = ln 2^40`` a correct port
    fails a tensor with probability below ``1e-12``. Channels, not elements, count as the
    independent units, because the errors of a channel's batch statistics are shared by
    all its elements."""
    f = max(int(channels), 1)
    return 1.0 + 2.0 * float(np.sqrt(AGGREGATE_LOG / f)) + 2.0 * AGGREGATE_LOG / f


def aggregate_statistic(got, ref, sigma, sigma_conv, u_conv: float) -> float:
    """``Q``, the mean of ``(got - ref)^2 / (sigma^2 + (u_conv sigma_conv)^2)`` over the
    tensor (``inf`` when ``got`` has a NaN or Inf)."""
    got = np.asarray(got, dtype=np.float64)
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    d = got - np.asarray(ref, dtype=np.float64)
    var = (np.square(np.asarray(sigma, np.float64))
           + np.square(u_conv * np.asarray(sigma_conv, np.float64)))
    var = np.maximum(var, float(np.finfo(np.float32).tiny) ** 2)
    with np.errstate(over="ignore", invalid="ignore"):
        q = float(np.mean(np.square(d) / var))
    return q if q == q else float("inf")


def aggregate_score(got, ref, sigma, sigma_conv, u_conv: float, channels: int) -> float:
    """``Q`` over its threshold: the tensor passes the aggregate test when it is <= 1
    (the same reading as an element's score)."""
    return aggregate_statistic(got, ref, sigma, sigma_conv, u_conv) / \
        aggregate_threshold(channels)


def worst_score(gc, y, stats, prof: Profile, *, ref_y=None, ref_stats=None,
                aggregate: bool = False) -> float:
    """Worst score of a case's output and (when ``stats`` is not None) its four running
    stats (``{"BatchNorm_0/mean": array, ...}``), against the oracle of golden case
    ``gc`` or against ``ref_y``/``ref_stats`` (a pitfall twin's results) under ``gc``'s
    bounds; with ``aggregate``, the aggregate test's scores of the same tensors too
    (against the oracle; a file without spreads has none)."""
    ry = gc.reference("output") if ref_y is None else ref_y
    worst = max_score(y, ry, gc.bound("output", prof))
    checked = [("output", y)]
    if stats is not None:
        for name in STAT_NAMES:
            rs = gc.reference(name) if ref_stats is None else ref_stats[name]
            worst = max(worst, max_score(stats[name], rs, gc.bound(name, prof)))
            checked.append((name, stats[name]))
    if aggregate:
        for name, got in checked:
            a = gc.aggregate_score(name, got, prof)
            if a is not None:
                worst = max(worst, a)
    return worst
