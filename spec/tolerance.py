"""The conformance tolerance rule (spec section 8), as pure NumPy functions.

Per element of a tensor ``t`` of one case (the output, or one running-stat vector)::

    bound = atol + rtol * |ref| + (kappa_factor * u * kappa + conv_factor * u_conv) * max|ref|
    score = |got - ref| / bound          (the element conforms when score <= 1)

``ref`` is the float64 oracle, ``max|ref|`` is taken over the whole tensor of the case,
``kappa`` is one number per case (``1 + max mean^2/(var+eps)`` over channels and both
BatchNorm layers, from the float64 pass), ``u = 2^-24`` and ``u_conv`` the unit roundoff
of the profile's convolution format (``conv_factor`` is 0 for fp32). The convolution
term carries no kappa: reduced-precision rounding of conv inputs is relative to the
conv output's own magnitude, and multiplying it by kappa would let epsilon mistakes
through on exactly the cases (variance near epsilon) that reveal them (SPEC.md 8.4).
NaN or Inf in ``got`` scores ``inf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec.constants import load

PROFILES: tuple[str, ...] = tuple(load()["tolerance"]["profiles"])


@dataclass(frozen=True)
class Terms:
    atol: float
    rtol: float
    kappa_factor: float
    conv_factor: float


@dataclass(frozen=True)
class Profile:
    name: str
    u: float
    u_conv: float
    output: Terms
    stats: Terms


def profile(name: str = "fp32") -> Profile:
    """The named tolerance profile from the spec constants."""
    tol = load()["tolerance"]
    if name not in tol["profiles"]:
        raise KeyError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    p = tol["profiles"][name]
    return Profile(
        name=name,
        u=tol["unit_roundoff"],
        u_conv=p["conv_unit_roundoff"],
        output=Terms(**p["output"]),
        stats=Terms(**p["stats"]),
    )


def bound(ref: np.ndarray, kappa: float, terms: Terms, prof: Profile) -> np.ndarray:
    """Per-element bound for a tensor whose float64 reference is ``ref``."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    global_term = (terms.kappa_factor * prof.u * kappa + terms.conv_factor * prof.u_conv) * scale
    return terms.atol + terms.rtol * np.abs(ref) + global_term


def worst_score(y, y_ref, stats, stats_ref, kappa: float, prof: Profile) -> float:
    """Worst score of a case: the output and (when ``stats`` is not None) each running
    stat, both given as ``{"BatchNorm_0/mean": array, ...}`` dicts."""
    from resblock.spec.constants import STAT_NAMES

    worst = float(np.max(scores(y, y_ref, kappa, prof.output, prof)))
    if stats is not None:
        for name in STAT_NAMES:
            worst = max(worst, float(np.max(scores(stats[name], stats_ref[name], kappa,
                                                   prof.stats, prof))))
    return worst


def scores(got: np.ndarray, ref: np.ndarray, kappa: float, terms: Terms, prof: Profile):
    """``|got - ref| / bound`` per element (``inf`` where got is NaN or Inf)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    err = np.abs(got - ref)
    s = err / bound(ref, kappa, terms, prof)
    return np.where(np.isfinite(got), s, np.inf)
