"""The conformance rule (spec section 8), as pure NumPy functions.

Per element of a checked tensor of one case (the output, a stage, or one running-stat
vector)::

    bound = max(budget + u_conv * budget_conv + u_s * budget_store, tiny)
    score = |got - ref| / bound          (the element conforms when score <= 1)

and over each whole tensor (spec section 8.3; TOSA's compliance check of dot products
bounds the sum of squared normalised errors the same way)::

    Q = mean((got - ref)^2 / (sigma^2 + (u_conv sigma_conv)^2 + (u_s sigma_store)^2))
    Q <= 1 + 2 sqrt(x / F) + 2 x / F     (F channels, x = ln 2^40)

``ref`` is the float64 oracle; ``budget`` and ``budget_conv`` are the per-element
budgets of the float32 error model (:mod:`resblock.spec.error_model`), stored in every
golden file next to the oracle, and ``sigma``/``sigma_conv`` the spreads of
:mod:`resblock.spec.error_spread` (a correct port's root-mean-square error per element);
``u_conv`` is the profile's unit roundoff of the convolution inputs and ``u_s`` that of
stored values (activations, parameters, statistics; ``budget_store`` and ``sigma_store``
of :mod:`resblock.spec.error_store`):

========== ========= ========= =================================================
profile    u_conv    u_s       admits
========== ========= ========= =================================================
fp32       0         0         float32 arithmetic in any order
tf32-conv  2^-11     0         also TF32-rounded convolution inputs
bf16-conv  2^-8      0         also bfloat16-rounded convolution inputs
fp16       2^-11     2^-11     float16 storage, float32 accumulation
bf16       2^-8      2^-8      bfloat16 storage, float32 accumulation
========== ========= ========= =================================================

A profile is a pair of unit roundoffs, not a mode: an inference budget parametrised
the same way reuses it. NaN or Inf in ``got`` scores ``inf``; so does NaN anywhere in
the inputs of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.errors import HarnessError
from resblock.spec.constants import STAT_NAMES, load

PROFILES: tuple[str, ...] = tuple(load()["tolerance"]["profiles"])
# Names that meant something else before spec 5.0 (``tf32`` was the TF32 convolution
# profile, now ``tf32-conv``; ``bf16`` changed meaning: it was ``bf16-conv``).
RENAMED: dict[str, str] = dict(load()["tolerance"].get("renamed_profiles", {}))


class ProfileError(HarnessError, KeyError):
    """A profile name the spec does not define (or no longer defines)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Profile:
    """A tolerance profile.

    Attributes:
      name: its name in ``constants.json``.
      u: float32's unit roundoff, 2^-24 (the accumulation's, every profile).
      u_conv: unit roundoff of the convolution inputs (default: 0, exact float32).
      u_store: unit roundoff of stored activations, parameters and statistics (default:
        0, float32 storage, whose rounding the fp32 budget already holds).
    """

    name: str
    u: float
    u_conv: float
    u_store: float = 0.0

    @property
    def stores_low(self) -> bool:
        """Whether the profile admits values stored in a type below float32."""
        return self.u_store > 0.0


def check_name(name: str) -> str:
    """``name`` if the spec defines that profile, else :class:`ProfileError` saying what
    to use (a renamed profile's new name)."""
    if name in PROFILES:
        return name
    if name in RENAMED:
        raise ProfileError(
            f"profile {name!r} was renamed {RENAMED[name]!r} in spec 5.0 (it admits rounded "
            f"convolution inputs only); expected one of {', '.join(PROFILES)}. Use "
            f"--profile {RENAMED[name]} for the old meaning, or --profile fp16 / bf16 for a "
            "block that stores activations, parameters and statistics in a low type")
    raise ProfileError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")


def profile(name: str = "fp32") -> Profile:
    """The named tolerance profile from the spec constants."""
    tol = load()["tolerance"]
    p = tol["profiles"][check_name(name)]
    return Profile(name=name, u=tol["unit_roundoff"], u_conv=p["conv_unit_roundoff"],
                   u_store=p["storage_unit_roundoff"])


def looser(a: str, b: str) -> bool:
    """Whether profile ``a`` admits strictly more than profile ``b`` (both unit roundoffs
    at least ``b``'s, one of them larger)."""
    pa, pb = profile(a), profile(b)
    return (pa.u_conv >= pb.u_conv and pa.u_store >= pb.u_store
            and (pa.u_conv, pa.u_store) != (pb.u_conv, pb.u_store))


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


def aggregate_statistic(got, ref, sigma, sigma_conv, u_conv: float, sigma_store=None,
                        u_store: float = 0.0) -> float:
    """``Q``, the mean of ``(got - ref)^2 / (sigma^2 + (u_conv sigma_conv)^2 +
    (u_store sigma_store)^2)`` over the tensor (``inf`` when ``got`` has a NaN or Inf)."""
    got = np.asarray(got, dtype=np.float64)
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return float("inf")
    d = got - np.asarray(ref, dtype=np.float64)
    var = (np.square(np.asarray(sigma, np.float64))
           + np.square(u_conv * np.asarray(sigma_conv, np.float64)))
    if u_store:
        var = var + np.square(u_store * np.asarray(sigma_store, np.float64))
    var = np.maximum(var, float(np.finfo(np.float32).tiny) ** 2)
    with np.errstate(over="ignore", invalid="ignore"):
        q = float(np.mean(np.square(d) / var))
    return q if q == q else float("inf")


def aggregate_score(got, ref, sigma, sigma_conv, u_conv: float, channels: int,
                    sigma_store=None, u_store: float = 0.0) -> float:
    """``Q`` over its threshold: the tensor passes the aggregate test when it is <= 1
    (the same reading as an element's score)."""
    return aggregate_statistic(got, ref, sigma, sigma_conv, u_conv, sigma_store,
                               u_store) / aggregate_threshold(channels)


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
