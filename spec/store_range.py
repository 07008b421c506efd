"""The storage profiles' range (spec sections 8.6 and 12.4): when a case is outside one.

The ``fp16`` and ``bf16`` profiles (:mod:`resblock.spec.error_store`,
:mod:`resblock.spec.inference_store`) bound a port that stores its values in a low type,
and their derivation assumes that every stored value is finite in that type. A value
whose magnitude reaches the type's overflow threshold is stored as ``inf`` by a
conforming port, which then scores ``inf``: such a case tests the type's range, not the
port, and is **outside the profile** (not run; ``resblock check`` reports it skipped).

Which values. Those the storage model rounds to the low type in *every* admitted form of
the block (a form-specific intermediate, a centred value or a folded kernel, is the
port's choice: one that overflows in it could have chosen another form):

* training (section 8.6): the inputs ``x``; every parameter; the running statistics
  given and returned; the stage values ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``,
  ``sum`` and the output; the batch mean and the (biased) batch variance of each
  BatchNorm. The reciprocal square root ``1 / sqrt(var + eps)`` is at most
  ``1 / sqrt(eps)``, 316, and never overflows.
* inference (section 12.4): ``x``; every parameter; the running statistics; the stage
  values of the inference block and its output; the gain ``g = scale / sqrt(rv + eps)``
  of each BatchNorm (every form stores it).

The margin. A given value (``x``, a parameter, a given running statistic) is rounded
once: it overflows when ``|v| >= fmax + ulp(fmax) / 2`` (round to nearest; float16:
65520). A computed value is the port's, not the oracle's: a conforming port's value lies
within the bound of the oracle's, so it may overflow when ``|v| + err >= fmax +
ulp(fmax) / 2`` with ``err`` the profile's bound of that value (the checked tensors' per
element bound; the batch statistics' error is at most ``1 / (1 - M)`` times the bound of
the running statistic they update, which holds ``(1 - M)`` times it; the gain's is
``|g| (r_g + 2.5 u_s)``, its float32 and stored inputs' relative errors). A case is
outside when some value may overflow: a correct port could be rejected there.

Pure functions of float64 arrays; the golden reader gathers the values
(:meth:`resblock.golden.store.GoldenCase.outside_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec.constants import MOMENTUM, STAT_NAMES


@dataclass(frozen=True)
class StorageType:
    """A low storage type: its name, largest finite value and significand bits (the
    implicit bit not counted)."""

    name: str
    fmax: float
    mantissa_bits: int

    @property
    def overflow_at(self) -> float:
        """The smallest magnitude that rounds to ``inf`` (round to nearest, ties to even:
        ``fmax`` has an odd significand, so the half-way value rounds up)."""
        exponent = int(np.floor(np.log2(self.fmax)))
        return self.fmax + 2.0 ** (exponent - self.mantissa_bits - 1)


FLOAT16 = StorageType("float16", 65504.0, 10)
BFLOAT16 = StorageType("bfloat16", (2.0 - 2.0 ** -7) * 2.0 ** 127, 7)
# The profile that stores values in each type (spec section 8.2; tolerance.PROFILES).
STORAGE_TYPES: dict[str, StorageType] = {"fp16": FLOAT16, "bf16": BFLOAT16}


def storage_type(prof) -> StorageType | None:
    """The low type a profile stores values in; None for a profile that stores float32
    (fp32, tf32-conv, bf16-conv: their values are never outside)."""
    if not prof.u_store:
        return None
    stype = STORAGE_TYPES[prof.name]
    if 2.0 ** -(stype.mantissa_bits + 1) != prof.u_store:
        raise ValueError(f"profile {prof.name}: unit roundoff {prof.u_store} is not "
                         f"{stype.name}'s")
    return stype


@dataclass(frozen=True)
class Overflow:
    """Why a case is outside a profile: the value that may overflow, its largest oracle
    magnitude and the margin a conforming port may add to it."""

    value: str
    magnitude: float
    margin: float
    stype: StorageType

    @property
    def reason(self) -> str:
        t = self.stype
        if self.magnitude > t.fmax:
            return (f"{self.value} reaches {self.magnitude:.3g} > {t.name}'s {t.fmax:.6g} "
                    "(a conforming port stores inf)")
        return (f"{self.value} reaches {self.magnitude:.6g}, within its error bound "
                f"{self.margin:.3g} of {t.name}'s overflow at {t.overflow_at:.6g} (a "
                "conforming port may store inf)")


def first_overflow(values: dict, stype: StorageType | None) -> Overflow | None:
    """The value of ``values`` (``{label: (array, err)}``, ``err`` an array or scalar
    bound of a conforming port's deviation, 0 for a given value) that may overflow the
    type, the one reaching furthest beyond it; None when every value fits (or when
    ``stype`` is None)."""
    if stype is None:
        return None
    worst = None
    for label, (v, err) in values.items():
        v = np.abs(np.asarray(v, np.float64))
        if not v.size:
            continue
        reach = v + np.broadcast_to(np.asarray(err, np.float64), v.shape)
        i = int(np.argmax(np.where(np.isnan(reach), -np.inf, reach)))
        r = float(reach.flat[i])
        if r >= stype.overflow_at and (worst is None or r > worst[0]):
            worst = (r, Overflow(label, float(v.flat[i]), r - float(v.flat[i]), stype))
    return None if worst is None else worst[1]


_STAT_WORDS = {"mean": "running mean", "var": "running variance"}


def _stat_label(name: str, when: str) -> str:
    layer, leaf = name.split("/")
    return f"{_STAT_WORDS[leaf]} of {layer} ({when})"


def _stage_label(name: str) -> str:
    return "output y" if name == "output" else f"stage {name}"


def _param_values(params) -> dict:
    return {f"{leaf} of {layer}": (np.asarray(a, np.float64), 0.0)
            for layer, leaves in params.items() for leaf, a in leaves.items()}


def training_values(x, params, stats_in: dict, oracle: dict, bounds: dict) -> dict:
    """The values a training port of a storage profile stores (the module docstring):
    ``stats_in`` the given running statistics by STAT_NAMES name; ``oracle`` the float64
    oracle of every stage, "output" and every STAT_NAMES name (the updated statistics);
    ``bounds`` the profile's bound of each (the same names)."""
    out = {"x": (np.asarray(x, np.float64), 0.0)}
    out.update(_param_values(params))
    for n in STAT_NAMES:
        out[_stat_label(n, "given")] = (stats_in[n], 0.0)
    for name, ref in oracle.items():
        label = _stat_label(name, "updated") if name in STAT_NAMES else _stage_label(name)
        out[label] = (ref, bounds[name])
    for layer, stage in (("BatchNorm_0", "conv1"), ("BatchNorm_1", "conv2")):
        c = np.asarray(oracle[stage], np.float64)
        mean = c.mean(axis=(0, 1, 2))
        var = np.square(c - mean).mean(axis=(0, 1, 2))
        out[f"batch mean of {layer}"] = (mean, bounds[f"{layer}/mean"] / (1.0 - MOMENTUM))
        out[f"batch variance of {layer}"] = (var, bounds[f"{layer}/var"] / (1.0 - MOMENTUM))
    return out


# Relative error of the gain before it is stored, per unit u_s: the running variance
# stored (1/2 after the square root), scale stored (1) and the reciprocal square root
# stored (1); float32's own r_g is added by inference_values.
GAIN_STORE_REL = 2.5


def inference_values(x, params, running_stats, stages: dict, bounds: dict,
                     u_store: float) -> dict:
    """The values an inference port of a storage profile stores: ``stages`` the float64
    oracle of every stage and "output" (:func:`resblock.spec.inference.forward`),
    ``bounds`` the profile's bound of each; ``u_store`` the profile's unit roundoff."""
    from resblock.spec.inference import _g_rel, bn_gain

    out = {"x": (np.asarray(x, np.float64), 0.0)}
    out.update(_param_values(params))
    for layer, leaves in running_stats.items():
        for leaf, a in leaves.items():
            out[f"{_STAT_WORDS[leaf]} of {layer}"] = (np.asarray(a, np.float64), 0.0)
    for name, ref in stages.items():
        out[_stage_label(name)] = (ref, bounds[name])
    for layer, leaves in running_stats.items():
        rv = np.asarray(leaves["var"], np.float64)
        g = bn_gain(params[layer]["scale"], rv)
        rel = _g_rel(rv) + GAIN_STORE_REL * u_store
        out[f"gain scale / sqrt(var + eps) of {layer}"] = (g, np.abs(g) * rel)
    return out


__all__ = ["BFLOAT16", "FLOAT16", "GAIN_STORE_REL", "Overflow", "STORAGE_TYPES",
           "StorageType", "first_overflow", "inference_values", "storage_type",
           "training_values"]
