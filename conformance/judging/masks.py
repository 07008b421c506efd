"""The backward verdict with the ReLU masks resolved (spec section 10.4).

The stored gradient budgets admit, for every ReLU input within ``S`` forward spreads of
0, a flipped mask (the model's ``m``), and one flipped mask moves a large tensor's
first-layer gradients as far as an unbiased variance does. Where a case has such masks,
the checker recomputes the float64 oracle from the case's inputs (NumPy only), takes
out exactly the flips the implementation's gradients show, and judges the rest with the
exact-mask model (:func:`resblock.spec.mask_flips.resolve`). A correct port conforms
with whatever masks it saw; a systematic error no longer hides behind the flips it
could have made. Cases too large for the exact model (its cost limit,
``resblock.spec.source_images.exact``) keep the stored verdict alone.
"""

from __future__ import annotations

from resblock.conformance.judging.compare import Spread, TensorReport, compare_tensor


def resolve_masks(gc, grads: dict, prof, layout: str = "nhwc"
                  ) -> tuple[list[TensorReport], str] | None:
    """``(reports, note)`` of a case's gradients (flat NHWC/HWIO) judged with its
    ambiguous masks resolved, or None when it has none (or is too large to resolve):
    then the stored verdict is the whole verdict."""
    import numpy as np

    from resblock.conformance.running.adapters import user_index
    from resblock.spec import backward as bwd
    from resblock.spec import mask_flips, source_images
    from resblock.spec.error_model import SAFETY
    from resblock.spec.error_model_backward import GRAD_TENSORS

    c = gc.case
    if c.n * c.h * c.w <= 1 or not source_images.exact((c.n, c.h, c.w, c.features)):
        return None
    x, params, stats, y_bar = gc.x, gc.params, gc.batch_stats_in, gc.y_bar
    bw = bwd.backward(x, params, stats, y_bar)
    if not mask_flips.ambiguous(x, params, stats, bw, prof.u_conv):
        return None
    ref = {t: gc.grad_reference(t) for t in GRAD_TENSORS}
    try:
        r = mask_flips.resolve(x, params, stats, y_bar, grads, ref, prof.u_conv, bw=bw)
    except mask_flips.TooManyFlips:
        return None
    reports = []
    for t in GRAD_TENSORS:
        label = "x_bar" if t == "x" else f"{t}_bar"
        rep = compare_tensor(label, r.adjusted[t], ref[t], r.bounds[t], spread=Spread(
            r.sigma[t], r.sigma_conv[t], prof.u_conv, c.features))
        if t == "x":
            from dataclasses import replace

            rep = replace(rep, worst_index=user_index(rep.worst_index, layout))
        reports.append(rep)
    stages = {"sum": "output ReLU", "bn1": "relu1"}
    flipped = ", ".join(f"{stages[s]} at {tuple(int(i) for i in np.asarray(j))}"
                        for s, j in r.chosen)
    note = (f"{len(r.flips)} ReLU masks within {SAFETY:g} forward spreads of 0 resolved "
            f"(spec 10.4): " + (f"flipped here and taken out exactly: {flipped} (N, H, W, C)"
                                if flipped else "none flipped"))
    return reports, note
