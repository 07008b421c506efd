"""The conformance rule (spec section 8), as pure NumPy functions.

Per element of a checked tensor of one case (the output, a stage, or one running-stat
vector)::

    bound = max(budget + u_conv * budget_conv, tiny)
    score = |got - ref| / bound          (the element conforms when score <= 1)

``ref`` is the float64 oracle; ``budget`` and ``budget_conv`` are the per-element
budgets of the float32 error model (:mod:`resblock.spec.error_model`), stored in every
golden file next to the oracle; ``u_conv`` is the profile's unit roundoff of the
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


def worst_score(gc, y, stats, prof: Profile, *, ref_y=None, ref_stats=None) -> float:
    """Worst score of a case's output and (when ``stats`` is not None) its four running
    stats (``{"BatchNorm_0/mean": array, ...}``), against the oracle of golden case
    ``gc`` or against ``ref_y``/``ref_stats`` (a pitfall twin's results) under ``gc``'s
    bounds."""
    ry = gc.reference("output") if ref_y is None else ref_y
    worst = max_score(y, ry, gc.bound("output", prof))
    if stats is not None:
        for name in STAT_NAMES:
            rs = gc.reference(name) if ref_stats is None else ref_stats[name]
            worst = max(worst, max_score(stats[name], rs, gc.bound(name, prof)))
    return worst
