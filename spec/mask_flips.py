"""ReLU masks a correct port may flip, what each flip does to the gradients exactly, and
the backward rule with the flips resolved (spec section 10.4, DESIGN section 6).

Where a pre-activation's oracle value lies within ``S`` forward spreads of 0, a correct
float32 port may see either sign, and its cotangent there is 0 or the incoming one. The
stored backward budgets admit that by a hard term ``m`` carried by the triangle
inequality; at 2^14 values per channel and more, one such flip moves the first layer's
gradients as far as an unbiased variance does, and ``m`` makes the bound 1e5 times a
correct port's rounding error. This module resolves the masks instead:

* :func:`ambiguous` lists the masks a conforming port may flip (the same criterion as
  the model's ``m``, exact signs excluded);
* :func:`change` computes the exact change of every gradient when a set of masks flips:
  the backward is linear in the cotangent for a fixed forward, so it is the VJP of the
  changed cotangent elements (``+-g`` at each). Flips within one ReLU add; an output flip
  changes the cotangent a ``relu1`` flip switches, so across the two they interact;
  :func:`directions` gives each flip's own change;
* :func:`fit` finds the set of flips (each 0 or 1) that best explains a port's residual
  in units of the exact-mask spreads (least squares, rounded, then single-flip descent;
  :func:`resolve` repeats the descent on the exact change where the ReLUs interact);
* :func:`resolve` judges what is left with the exact-mask model (``m = 0``,
  :func:`resblock.spec.error_model_backward.raw_errors` with ``exact_masks``): per
  element within ``S`` spreads and by the aggregate test of section 8.5.

A correct port's residual after its own flips are taken out is rounding noise, which the
exact-mask model bounds; a systematic error (an unbiased variance, a stale statistic) is
not a combination of single-element flips and stays. The cost is one partial float64
backward per ambiguous mask and an ``A x A`` least-squares problem; beyond
:data:`MAX_FLIPS` masks the masks are not resolved (:class:`TooManyFlips`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resblock.spec import backward as bwd
from resblock.spec import error_model_backward as emb
from resblock.spec import error_spread, tolerance
from resblock.spec.error_model import SAFETY, bound_from

MAX_FLIPS = 256
_AXES = (0, 1, 2)


class TooManyFlips(ValueError):
    """More ambiguous masks than :data:`MAX_FLIPS`: the masks are not resolved."""


@dataclass(frozen=True)
class Flip:
    """One ambiguous ReLU mask: its stage (``"sum"`` for the output ReLU, ``"bn1"`` for
    ``relu1``), the element, its distance to 0 in forward spreads, and ``direction``, the
    exact change of every gradient (name -> float64 array) if a port flips it."""

    stage: str
    index: tuple
    distance: float
    direction: dict


def ambiguous(x, params, batch_stats, bw, u_conv: float = 0.0, spread=None) -> list[tuple]:
    """``(stage, index, |p| / spread)`` of every ReLU mask a conforming port may flip
    under a profile with convolution unit roundoff ``u_conv``, nearest to 0 first (the
    criterion of the model's ``m``; signs that are exact in float32 excluded).
    ``spread``: the case's forward spread with its errors, if the caller has it."""
    st = bw.forward.stages
    sp = error_spread.forward_spread(x, params, batch_stats, st) if spread is None else spread
    out = []
    for stage, layer in (("sum", "BatchNorm_1"), ("bn1", "BatchNorm_0")):
        pre = st[stage]
        spread = sp.err[stage].sigma() + u_conv * sp.err[stage].sigma_conv()
        exact = np.broadcast_to(np.asarray(params[layer]["scale"]) == 0, pre.shape)
        amb = (np.abs(pre) <= SAFETY * spread) & ~exact
        for idx in zip(*np.nonzero(amb), strict=True):
            idx = tuple(int(i) for i in idx)
            out.append((stage, idx, float(abs(pre[idx]) / spread[idx])))
    return sorted(out, key=lambda t: t[2])


def _grads(x_bar, params_bar) -> dict:
    out = {"x": x_bar}
    for name in emb.GRAD_TENSORS[1:]:
        layer, leaf = name.split("/")
        out[name] = params_bar[layer][leaf]
    return out


def change(x, params, y_bar, bw, flipped) -> dict:
    """The exact change of every gradient when the masks ``flipped`` (``(stage, index)``
    pairs) flip together. Output-ReLU flips change the cotangent that reaches ``relu1``,
    so a ``relu1`` flip moves the gradients by its cotangent *after* them: flips of the
    two ReLUs do not simply add (they do within one ReLU)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    st, cot = bw.forward.stages, bw.cotangents
    x, y_bar = f64(x), f64(y_bar)
    d_sum = np.zeros(x.shape)
    for stage, idx in flipped:
        if stage == "sum":
            d_sum[idx] = -y_bar[idx] if st["sum"][idx] > 0 else y_bar[idx]
    zero_f = np.zeros(x.shape[-1])
    if np.any(d_sum):
        c2b, s1, b1 = bwd.batch_norm_backward(st["conv2"], p["BatchNorm_1"]["scale"], d_sum)
        d_r = bwd.conv3x3_input_grad(c2b, p["Conv_1"]["kernel"])
        k1, cb1 = bwd.conv3x3_kernel_grad(st["relu1"], c2b), c2b.sum(axis=_AXES)
    else:
        d_r = np.zeros(x.shape)
        s1 = b1 = cb1 = zero_f
        k1 = np.zeros(p["Conv_1"]["kernel"].shape)
    open1 = st["bn1"] > 0
    for stage, idx in flipped:
        if stage == "bn1":
            open1[idx] = not open1[idx]
    # the new cotangent of bn1 minus the oracle's
    d_bn1 = np.where(open1, cot["relu1"] + d_r, 0.0) - np.where(st["bn1"] > 0, cot["relu1"],
                                                                 0.0)
    c1b, s0, b0 = bwd.batch_norm_backward(st["conv1"], p["BatchNorm_0"]["scale"], d_bn1)
    params_bar = {
        "Conv_0": {"kernel": bwd.conv3x3_kernel_grad(x, c1b), "bias": c1b.sum(axis=_AXES)},
        "BatchNorm_0": {"scale": s0, "bias": b0},
        "Conv_1": {"kernel": k1, "bias": cb1},
        "BatchNorm_1": {"scale": s1, "bias": b1}}
    return _grads(d_sum + bwd.conv3x3_input_grad(c1b, p["Conv_0"]["kernel"]), params_bar)


def directions(x, params, y_bar, bw, masks) -> list[Flip]:
    """Each mask of ``masks`` (from :func:`ambiguous`) with the exact change of every
    gradient when it flips on its own."""
    return [Flip(stage, idx, dist, change(x, params, y_bar, bw, [(stage, idx)]))
            for stage, idx, dist in masks]


EXHAUSTIVE = 16  # up to this many flips the fit tries every subset


def fit(residual: dict, flips: list[Flip], sigma: dict) -> np.ndarray:
    """The flips (a 0/1 vector) whose directions best explain ``residual`` (name ->
    got - oracle) in units of ``sigma``: every subset up to :data:`EXHAUSTIVE` flips
    (flips of equal-valued channels are strongly correlated, where rounding a
    least-squares solution fails); beyond, the least-squares coefficients rounded into
    {0, 1}, then single flips toggled while that lowers the weighted residual."""
    a = len(flips)
    if a == 0:
        return np.zeros(0)
    w = {t: 1.0 / np.asarray(sigma[t], np.float64) for t in residual}
    d = [{t: f.direction[t] * w[t] for t in residual} for f in flips]
    y = {t: np.asarray(residual[t], np.float64) * w[t] for t in residual}
    gram = np.empty((a, a))
    rhs = np.empty(a)
    for i in range(a):
        rhs[i] = sum(float(np.vdot(d[i][t], y[t])) for t in residual)
        for j in range(i + 1):
            gram[i, j] = gram[j, i] = sum(float(np.vdot(d[i][t], d[j][t])) for t in residual)
    if a <= EXHAUSTIVE:  # |y - D b|^2 - |y|^2 for every b at once
        subsets = (np.arange(2 ** a)[:, None] >> np.arange(a)) & 1
        subsets = subsets.astype(np.float64)
        costs = np.einsum("si,ij,sj->s", subsets, gram, subsets) - 2.0 * subsets @ rhs
        return subsets[int(np.argmin(costs))].copy()
    coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    b = (coef > 0.5).astype(np.float64)

    # |y - D v|^2 without the constant |y|^2
    return descend(b, lambda v: float(v @ gram @ v - 2.0 * v @ rhs))


def descend(b: np.ndarray, cost) -> np.ndarray:
    """Toggle single flips of ``b`` (0/1, changed in place) while one lowers ``cost``."""
    best = cost(b)
    improved = True
    while improved:
        improved = False
        for i in range(len(b)):
            b[i] = 1.0 - b[i]
            c = cost(b)
            if c < best:
                best, improved = c, True
            else:
                b[i] = 1.0 - b[i]
    return b


@dataclass(frozen=True)
class Resolution:
    """The backward rule with the masks resolved: the ambiguous masks, those found
    flipped, the gradients with those flips taken out (``adjusted``, name -> float64),
    the exact-mask model's per-element ``bounds`` and spreads (``sigma``, ``sigma_conv``)
    under the profile, the worst per-element and aggregate scores and the tensor of the
    worst."""

    flips: tuple
    chosen: tuple
    adjusted: dict
    bounds: dict
    sigma: dict
    sigma_conv: dict
    element: float
    aggregate: float
    worst_tensor: str

    @property
    def conforms(self) -> bool:
        return self.element <= 1.0 and self.aggregate <= 1.0


def resolve(x, params, batch_stats, y_bar, grads: dict, ref: dict | None = None,
            u_conv: float = 0.0, bw=None) -> Resolution:
    """Judge a port's gradients (name -> array, NHWC/HWIO) with its ReLU masks resolved.
    ``ref``: the float64 oracle gradients (recomputed when None); ``bw``: the oracle's
    :class:`resblock.spec.backward.BackwardResult` (recomputed when None)."""
    bw = bw if bw is not None else bwd.backward(x, params, batch_stats, y_bar)
    if ref is None:
        ref = _grads(bw.x_bar, bw.params_bar)
    # One forward spread for every model below: a flipped mask changes the backward only,
    # so the oracle's forward stages, and the spread built on them, are the same.
    sp = error_spread.forward_spread(x, params, batch_stats, bw.forward.stages)
    masks = ambiguous(x, params, batch_stats, bw, u_conv, spread=sp)
    if len(masks) > MAX_FLIPS:
        raise TooManyFlips(
            f"{len(masks)} ReLU masks lie within {SAFETY:g} forward spreads of 0, more than "
            f"the {MAX_FLIPS} this check resolves; the per-element verdict stands alone")
    flips = directions(x, params, y_bar, bw, masks)
    errs = emb.raw_errors(x, params, batch_stats, y_bar, bw, exact_masks=True, spread=sp)
    # Fit weights: the spreads *with* the mask term, which cover the paths a flip opens
    # (the exact-mask model at the oracle's masks says nothing of them: where every mask
    # is closed it gives a spread of 0 to a gradient that a flip makes non-zero).
    loose = emb.raw_errors(x, params, batch_stats, y_bar, bw, spread=sp)
    sigma = {t: np.sqrt(e.v + np.square(e.k) + np.square(e.m)
                        + np.square(u_conv) * (e.vs + np.square(e.ks) + np.square(e.ms)))
             + np.finfo(np.float32).tiny for t, e in loose.items()}
    residual = {t: np.asarray(grads[t], np.float64) - np.asarray(ref[t], np.float64)
                for t in emb.GRAD_TENSORS}
    b = fit(residual, flips, sigma)

    def against(v):
        """The residual against the oracle with the flips ``v`` and its model there."""
        chosen = [(f.stage, f.index) for f, on in zip(flips, v, strict=True) if on]
        if not chosen:
            return residual, errs
        bw_f = bwd.backward(x, params, batch_stats, y_bar, flipped=chosen)
        g_f = _grads(bw_f.x_bar, bw_f.params_bar)
        rest = {t: residual[t] + np.asarray(ref[t], np.float64) - g_f[t] for t in residual}
        return rest, emb.raw_errors(x, params, batch_stats, y_bar, bw_f, exact_masks=True,
                                    spread=sp)

    def cost(v):
        chosen = [(f.stage, f.index) for f, on in zip(flips, v, strict=True) if on]
        d = change(x, params, y_bar, bw, chosen) if chosen else None
        rest = residual if d is None else {t: residual[t] - d[t] for t in residual}
        return sum(float(np.sum(np.square(rest[t] / sigma[t]))) for t in rest)

    if any(f.stage == "sum" for f in flips) and any(f.stage == "bn1" for f in flips):
        # the two ReLUs' flips interact: descend on the exact cost from the linear fit
        b = descend(b, cost)
    # judged against the oracle evaluated with the masks the port saw, under the model
    # evaluated there too (a flipped path carries its own rounding errors)
    residual, errs = against(b)
    element, aggregate, worst = 0.0, 0.0, emb.GRAD_TENSORS[0]
    channels = np.shape(x)[-1]
    bounds, spread, spread_conv = {}, {}, {}
    for t, e in errs.items():
        bounds[t] = bound_from(e.budget(), e.budget_conv(), u_conv)
        spread[t] = np.sqrt(e.v + np.square(e.k))
        spread_conv[t] = np.sqrt(e.vs + np.square(e.ks))
        zero = np.zeros_like(residual[t])
        s = tolerance.max_score(residual[t], zero, bounds[t])
        q = tolerance.aggregate_score(residual[t], zero, spread[t], spread_conv[t], u_conv,
                                      channels)
        if max(s, q) > max(element, aggregate):
            worst = t
        element, aggregate = max(element, s), max(aggregate, q)
    chosen = tuple((f.stage, f.index) for f, on in zip(flips, b, strict=True) if on)
    adjusted = {t: np.asarray(ref[t], np.float64) + residual[t] for t in residual}
    return Resolution(tuple(flips), chosen, adjusted, bounds, spread, spread_conv, element,
                      aggregate, worst)


__all__ = ["MAX_FLIPS", "Flip", "Resolution", "TooManyFlips", "ambiguous", "change", "directions",
           "fit", "resolve"]
