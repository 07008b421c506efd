"""The inference block's storage term: a correct deployment's extra error when it *stores*
values in a low type (spec section 12.4, the ``fp16`` and ``bf16`` profiles).

The model is the training block's (:mod:`resblock.spec.error_store`): every stored value
is rounded once, a relative error of at most ``u_s`` (float16 ``2^-11``, bfloat16
``2^-8``), plus the absolute ``u_s tiny`` of float16's subnormal range (``tiny = 2^-14``);
every sum accumulates in float32 and keeps the fp32 budget of :mod:`resblock.spec.
inference`. To first order the bound is::

    bound = budget + u_conv * budget_conv + u_s * budget_store

with ``budget_store = S t`` derived here. The convolution inputs' roundings (``x``, the
kernels and ``relu1``: a profile that stores in the low type has ``u_conv = u_s``) are
``budget_conv``'s term already and are not counted again; ``own(v) = |v| + tiny``.

The terms of ``t`` of one layer (``a`` the convolution's input with propagated storage
error ``t_a``, not its own rounding; ``g = scale / sqrt(rv + eps)``, ``r = 1 / sqrt(rv
+ eps)``, ``dev = |(c - rm) g|``, ``b' = (b - rm) g + beta`` the folded bias; every
quantity float64); a port evaluates a layer in one of the three admitted forms, so the
form-specific terms enter as the largest of the three:

* **Convolution** ``c = a * k + b`` (as in training, :func:`~resblock.spec.error_store.
  conv_store`): ``t_a * |k|``, the bias stored ``|b|``, the output stored ``own(c)``;
  scaled by ``|g|`` into ``z``.
* **The gain** (every form): the running variance stored, ``dev own(rv) / (2 (rv +
  eps))``; ``scale`` stored, ``|c - rm| r own(scale)``; the reciprocal square root and
  ``g`` itself stored, ``|c - rm| (own(g) + |scale| own(r))``. Epsilon is added in
  float32 (float16 holds ``1e-5`` only as a subnormal).
* **Subtract first**: the running mean stored, ``|g| own(rm)``; the centred value stored,
  ``|g| own(c - rm)``; its product with ``g`` stored, ``own(dev)``.
* **Affine**: the products ``c g`` and ``rm g`` and the shift ``beta - rm g`` stored,
  ``own(c g) + own(rm g) + own(beta - rm g)``.
* **Folded into the convolution**: the folded kernel ``k g`` stored (engines fold in the
  low type: a second rounding after the kernel's own, which is ``budget_conv``'s),
  ``|g| (|a| * |k|) + tiny (|a| * 1)``; the folded bias's ``b - rm``, its product with
  ``g`` and ``b'`` stored, ``|g| own(b - rm) + own((b - rm) g) + own(b')``.
* ``beta`` stored, ``own(beta)``; the BatchNorm output stored, ``own(z)``.

The ReLU passes ``t`` on; ``relu1``'s own rounding is ``bn1``'s, a convolution input, so
the second layer's ``t_a`` is the first BatchNorm's ``t`` without ``own(z)``. The residual
sum adds ``x`` stored, ``own(x)``, and the sum stored, ``own(sum)``; ``y = relu(sum)`` is
exact on the stored sum.

The aggregate test's spread gets the same term in quadrature (``sigma_store``, per unit
``u_s``), as in training: each element-wise rounding as a variance ``own(v)^2`` (three
times that of a rounding to nearest), the folded kernel's roundings as element-wise
(``g^2 (a^2 * k^2)``), the channel-shared ones (the stored running statistics, ``scale``,
``g``, ``beta``, the biases and shifts) as one coherent standard deviation per channel,
those of BatchNorm_0 carried through the second convolution by Cauchy-Schwarz over the
nine taps (:func:`~resblock.spec.error_store.conv_spread`). There are no batch
reductions, so nothing cancels: the conv bias's rounding stays in the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock import blas
from resblock.spec.constants import EPSILON
from resblock.spec.error_model import SAFETY, abs_conv
from resblock.spec.error_store import TINY, conv_spread, conv_store, own, stored
from resblock.spec.inference import LAYERS, STAGES, TENSORS, _f64_tree


@dataclass(frozen=True)
class InferenceStore:
    """Sensitivities per unit ``u_s`` of an inference case's output: ``budget`` (``S t``)
    and ``sigma`` (the spread), float32 rounded up."""

    budget: np.ndarray
    sigma: np.ndarray


def _layer(p, st, conv_name, layer, a, c, z):
    """The per-channel and per-element quantities of one layer (float64)."""
    k, b = p[conv_name]["kernel"], p[conv_name]["bias"]
    scale, beta = p[layer]["scale"], p[layer]["bias"]
    rm, rv = st[layer]["mean"], st[layer]["var"]
    r = 1.0 / np.sqrt(rv + EPSILON)
    g = scale * r
    ag = np.abs(g)
    centred = c - rm
    b_fold = (b - rm) * g + beta
    return dict(k=k, b=b, scale=scale, beta=beta, rm=rm, rv=rv, r=r, g=g, ag=ag,
                centred=centred, dev=np.abs(centred) * ag, b_fold=b_fold, a=a, c=c, z=z)


def _rel_g(q):
    """The gain's relative storage error per unit ``u_s`` per term: the running variance,
    ``scale``, ``g`` and the reciprocal square root stored (the last three with tiny)."""
    rv_term = own(q["rv"]) / (2.0 * (q["rv"] + EPSILON))
    tiny_terms = TINY / np.maximum(np.abs(q["scale"]), TINY) + TINY / np.maximum(q["ag"], TINY)
    return rv_term, tiny_terms + TINY / np.maximum(q["r"], TINY)


def _bn_t(q, t_c):
    """``t`` of a BatchNorm output without its own rounding: the gain's and ``beta``'s
    terms, and the largest of the three forms' own terms (a port evaluates a layer in
    one form)."""
    ag, g, rm = q["ag"], q["g"], q["rm"]
    abs_cen = np.abs(q["centred"])
    common = (ag * t_c
              + q["dev"] * own(q["rv"]) / (2.0 * (q["rv"] + EPSILON))
              + abs_cen * q["r"] * own(q["scale"])
              + abs_cen * (own(g) + np.abs(q["scale"]) * own(q["r"]))
              + own(q["beta"]))
    subtract = ag * own(rm) + ag * own(q["centred"]) + own(q["dev"])
    affine = own(q["c"] * g) + own(rm * g) + own(q["beta"] - rm * g)
    folded = (ag * abs_conv(np.abs(q["a"]), np.abs(q["k"])).astype(np.float64)
              + TINY * abs_conv(np.abs(q["a"]), np.ones_like(q["k"])).astype(np.float64)
              + ag * own(q["b"] - rm) + own((q["b"] - rm) * g) + own(q["b_fold"]))
    return common + np.maximum(np.maximum(subtract, affine), folded)


def raw_budgets(x, params, running_stats, stages) -> dict:
    """The unscaled storage sensitivities ``t`` (float64) over :data:`~resblock.spec.
    inference.TENSORS`."""
    x = np.asarray(x, np.float64)
    p, st = _f64_tree(params), _f64_tree(running_stats)
    t = {}
    a, t_a = x, None
    for conv_name, layer, conv_stage, bn_stage in LAYERS:
        q = _layer(p, st, conv_name, layer, a, stages[conv_stage], stages[bn_stage])
        t[conv_stage] = conv_store(t_a, q["k"], q["b"], q["c"])
        prop = _bn_t(q, t[conv_stage])
        t[bn_stage] = prop + own(q["z"])
        if bn_stage == "bn1":
            t["relu1"] = t["bn1"]
            a, t_a = stages["relu1"], prop  # relu1's own rounding: budget_conv's
    t["sum"] = t["bn2"] + own(x) + own(stages["sum"])
    t["output"] = t["sum"]
    return {name: t[name] for name in TENSORS}


def _bn_spread(q, v_c, k_c):
    """``(v, k2)`` of a BatchNorm output: element-wise variance and coherent variance."""
    ag, g, rm = q["ag"], q["g"], q["rm"]
    t2 = abs_conv(np.square(q["a"]), np.square(q["k"])).astype(np.float64)
    v = (np.square(g) * v_c + np.square(ag * own(q["centred"])) + np.square(own(q["dev"]))
         + np.square(own(q["c"] * g)) + np.square(g) * t2 + np.square(own(q["z"])))
    off2 = (np.square(ag * own(rm)) + np.square(own(rm * g))
            + np.square(own(q["beta"] - rm * g)) + np.square(ag * own(q["b"] - rm))
            + np.square(own((q["b"] - rm) * g)) + np.square(own(q["b_fold"]))
            + np.square(own(q["beta"])))
    rv_term, tiny_terms = _rel_g(q)
    k_rel = np.sqrt(np.square(rv_term) + 3.0) + tiny_terms
    k2 = np.square(ag * k_c) + off2 + np.square(k_rel * q["dev"])
    return v, k2


def raw_spread(x, params, running_stats, stages) -> np.ndarray:
    """The unscaled storage spread of the output (float64)."""
    x = np.asarray(x, np.float64)
    p, st = _f64_tree(params), _f64_tree(running_stats)
    a = x
    v_a = k2_a = np.zeros(x.shape)
    for conv_name, layer, conv_stage, bn_stage in LAYERS:
        q = _layer(p, st, conv_name, layer, a, stages[conv_stage], stages[bn_stage])
        v_c, k_c = conv_spread(v_a, k2_a, q["k"], q["b"], q["c"])
        v, k2 = _bn_spread(q, v_c, k_c)
        if bn_stage == "bn1":
            open_ = stages["relu1"] > 0
            # bn1's own rounding is conv2's input rounding (sigma_conv's term)
            v_a = np.where(open_, v - np.square(own(q["z"])), 0.0)
            k2_a = np.where(open_, k2, 0.0)
            a = stages["relu1"]
    v = v + np.square(own(x)) + np.square(own(stages["sum"]))
    return np.sqrt(v + k2)


@blas.single_threaded
def model(x, params, running_stats, stages) -> InferenceStore:
    """Stored storage budget (``S t``) and spread of an inference case's output, float32
    rounded up (``stages``: :func:`resblock.spec.inference.forward`'s)."""
    t = raw_budgets(x, params, running_stats, stages)
    return InferenceStore(budget=stored(t["output"], SAFETY),
                          sigma=stored(raw_spread(x, params, running_stats, stages), 1.0))


__all__ = ["InferenceStore", "STAGES", "model", "raw_budgets", "raw_spread"]
