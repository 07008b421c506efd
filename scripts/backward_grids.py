"""The backward rule on generated gradient grids too large for the test suite.

    python scripts/backward_grids.py                       # the grids of issue 17
    python scripts/backward_grids.py functional,normal,16,32,32,8,0

For each case (family, inputs, n, h, w, features, seed) the inputs, the Flax reference's
forward and ``jax.vjp``, the float64 oracle backward and the backward model are
computed exactly as ``resblock generate --grad`` would (nothing is written); then the
reference, the correct recipes (NumPy, PyTorch autograd when torch is installed) and
wrong ports are scored per element and by the aggregate test (spec sections 8.5 and
10.4). The wrong ports are the backward twins of
``conformance/mistakes/variants_backward.py`` and a port whose ``Conv_0`` and
``BatchNorm_0`` gradients are zero. Two more correct ports take the ReLU masks a
conforming port may see: the float64 oracle backward with the one mask flipped whose
pre-activation lies closest to 0 in units of its forward spread (spec 10.4's ``m``),
for each ReLU; beside each its relative L2 change of the gradients (the first layer's
for ``relu1``), to compare with the unbiased-variance twin's. Prints the worst score per
port (1 = the bound) and the reference's slack; exits 1 when a correct port is rejected.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASES = ("functional,normal,2,4,4,4,0", "functional,normal,16,32,32,8,0",
         "functional,normal,16,64,64,4,0", "functional,normal,2,8,8,256,0")
WRONG = ("bwd_bn_stats_constant", "bwd_conv_kernel_grad_flipped",
         "bwd_bn_unbiased_var_everywhere", "bwd_relu_one_at_zero")
FIRST_LAYER = ("Conv_0/kernel", "Conv_0/bias", "BatchNorm_0/scale", "BatchNorm_0/bias")


def _recipe(name: str, layout: str):
    spec = importlib.util.spec_from_file_location(f"ex_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.backward, layout


def _flipped_masks(gc) -> dict:
    """``{name: (flat float32 gradients, |p| / sigma)}``: the oracle backward with the
    most ambiguous mask of each ReLU flipped (a conforming port may see either sign
    there, spec 10.4)."""
    from resblock.conformance.mistakes.variants_backward import flat
    from resblock.spec import backward as bwd
    from resblock.spec import error_spread

    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in gc.params.items()}
    res = bwd.backward(gc.x, gc.params, gc.batch_stats_in, gc.y_bar)
    st, cot = res.forward.stages, res.cotangents
    sp = error_spread.forward_spread(gc.x, gc.params, gc.batch_stats_in, st)
    out = {}
    for relu, stage in (("relu1", "bn1"), ("output ReLU", "sum")):
        ratio = np.abs(st[stage]) / sp.err[stage].sigma()
        j = np.unravel_index(np.argmin(ratio), ratio.shape)
        if stage == "sum":
            sum_bar = bwd.relu_backward(st["sum"], f64(gc.y_bar))
            sum_bar[j] = gc.y_bar[j] if sum_bar[j] == 0 else 0.0
            c2_bar, s1, b1 = bwd.batch_norm_backward(st["conv2"], p["BatchNorm_1"]["scale"],
                                                     sum_bar)
            r_bar = bwd.conv3x3_input_grad(c2_bar, p["Conv_1"]["kernel"])
            bn1_bar = bwd.relu_backward(st["bn1"], r_bar)
        else:
            sum_bar, c2_bar = cot["sum"], cot["conv2"]
            s1, b1 = res.params_bar["BatchNorm_1"]["scale"], res.params_bar["BatchNorm_1"]["bias"]
            r_bar = cot["relu1"]
            bn1_bar = bwd.relu_backward(st["bn1"], r_bar)
            bn1_bar[j] = r_bar[j] if bn1_bar[j] == 0 else 0.0
        c1_bar, s0, b0 = bwd.batch_norm_backward(st["conv1"], p["BatchNorm_0"]["scale"],
                                                 bn1_bar)
        params_bar = {
            "Conv_0": {"kernel": bwd.conv3x3_kernel_grad(f64(gc.x), c1_bar),
                       "bias": c1_bar.sum(axis=(0, 1, 2))},
            "BatchNorm_0": {"scale": s0, "bias": b0},
            "Conv_1": {"kernel": bwd.conv3x3_kernel_grad(st["relu1"], c2_bar),
                       "bias": c2_bar.sum(axis=(0, 1, 2))},
            "BatchNorm_1": {"scale": s1, "bias": b1}}
        x_bar = sum_bar + bwd.conv3x3_input_grad(c1_bar, p["Conv_0"]["kernel"])
        grads = {t: np.asarray(v, np.float32) for t, v in flat(x_bar, params_bar).items()}
        out[f"one {relu} mask flipped"] = (grads, float(ratio[j]))
    return out


def _rel_l2(grads, ref, names) -> float:
    """Relative L2 change of ``grads`` over the tensors ``names`` together."""
    d = sum(float(np.sum(np.square(np.asarray(grads[t], np.float64) - ref[t]))) for t in names)
    r = sum(float(np.sum(np.square(ref[t]))) for t in names)
    return float(np.sqrt(d / r)) if r else 0.0


def _resolved(gc, grads, ref, bw) -> tuple[str, bool]:
    """The masks-resolved verdict of ``grads`` in a few words (with the median slack of
    its exact-mask bounds), and whether it rejects."""
    from resblock.spec import mask_flips

    try:
        r = mask_flips.resolve(gc.x, gc.params, gc.batch_stats_in, gc.y_bar, grads, ref,
                               bw=bw)
    except mask_flips.TooManyFlips as e:
        return f"masks not resolved: {e}", False
    slack = []
    for t, b in r.bounds.items():
        d = np.abs(r.adjusted[t] - ref[t])
        if np.any(d > 0):
            slack.append(np.median(b[d > 0] / d[d > 0]))
    return (f"masks resolved ({len(r.chosen)} of {len(r.flips)} flipped): "
            f"{max(r.element, r.aggregate):.3g} {'ok' if r.conforms else 'rejected'}, "
            f"median slack {np.median(slack) if slack else float('inf'):.3g}",
            not r.conforms)


def _score(gc, grads, prof) -> tuple[float, float]:
    """(worst per-element score, worst aggregate score) over the gradients."""
    from resblock.conformance.mistakes.variants_backward import backward_score

    element = backward_score(gc, grads, prof)
    return element, max(backward_score(gc, grads, prof, aggregate=True), element)


def main(argv=None) -> int:
    from resblock.conformance.mistakes.variants_backward import flat, twin_backward
    from resblock.conformance.running import adapters
    from resblock.conformance.running.invoke import call_once, case_inputs
    from resblock.generator.batched import derive_cases
    from resblock.generator.engine import ReferenceRunner, compute_group
    from resblock.golden.store import GoldenCase, grad_path
    from resblock.spec import backward as bwd
    from resblock.spec import tolerance
    from resblock.spec.cases import Case
    from resblock.spec.error_model import SAFETY
    from resblock.spec.error_model_backward import GRAD_TENSORS

    fp32 = tolerance.profile("fp32")
    runner = ReferenceRunner(grad=True)
    recipes = {"numpy_backward": _recipe("numpy_backward", "nhwc")}
    try:
        import torch  # noqa: F401

        recipes["torch_autograd_backward"] = _recipe("torch_autograd_backward", "nchw")
    except ImportError:
        pass
    false_rejects = 0
    for arg in (argv if argv is not None else sys.argv[1:]) or CASES:
        fam, inp, n, h, w, f, seed = arg.split(",")
        case = Case(fam, inp, int(n), int(h), int(w), int(f), int(seed))
        arrays, extras = compute_group([case], runner, derive_cases([case]))
        gc = GoldenCase(case, dict(extras[0]), {k: v[0] for k, v in arrays.items()})
        ref = {t: gc.grad_reference(t) for t in GRAD_TENSORS}
        print(f"{case.id} ({case.n * case.h * case.w} values per channel)")
        ports = {"jax.vjp": {t: gc.arrays[grad_path(t)] for t in GRAD_TENSORS}}
        for name, (fn, layout) in recipes.items():
            out = call_once(fn, "backward", layout, case_inputs(gc, "backward"))
            if out.error:
                raise RuntimeError(out.error)
            ports[name] = adapters.split_backward(out.result, case, layout)
        for name, (grads, ratio) in _flipped_masks(gc).items():
            if ratio > SAFETY:  # not ambiguous: no conforming port sees this flip
                print(f"  ({name}: no ambiguous mask, the closest is {ratio:.3g} forward "
                      "spreads from 0)")
                continue
            ports[name] = grads
            print(f"  ({name}: |p| = {ratio:.3g} forward spreads; first-layer gradients "
                  f"change by {_rel_l2(grads, ref, FIRST_LAYER):.3g} relative L2)")
        wrong = {}
        with np.errstate(all="ignore"):
            for m in WRONG:
                wrong[m] = flat(*twin_backward(m, gc.x, gc.params, gc.batch_stats_in,
                                               gc.y_bar))
        zero = dict(ports["jax.vjp"])
        zero.update({t: np.zeros_like(zero[t]) for t in FIRST_LAYER})
        wrong["zero_first_layer"] = zero
        bw = bwd.backward(gc.x, gc.params, gc.batch_stats_in, gc.y_bar)
        for name, grads in ports.items():
            element, both = _score(gc, grads, fp32)
            d = {t: np.abs(np.asarray(grads[t], np.float64) - ref[t]) for t in GRAD_TENSORS}
            slack = [np.median(gc.grad_bound(t, fp32)[d[t] > 0] / d[t][d[t] > 0])
                     for t in GRAD_TENSORS if np.any(d[t] > 0)]
            resolved, rejected = _resolved(gc, grads, ref, bw)
            bad = both > 1.0 or rejected
            false_rejects += bad
            print(f"  {name:30s} worst {both:9.3g} (per element {element:9.3g}); median "
                  f"slack {np.median(slack):9.3g}; {resolved}{'  FALSE REJECT' if bad else ''}")
        for name, grads in wrong.items():
            element, both = _score(gc, grads, fp32)
            same = all(np.array_equal(np.asarray(grads[t], np.float64), ref[t])
                       for t in GRAD_TENSORS)
            resolved, rejected = _resolved(gc, grads, ref, bw)
            print(f"  X {name:28s} worst {both:9.3g} (per element {element:9.3g}; first "
                  f"layer {_rel_l2(grads, ref, FIRST_LAYER):9.3g} relative L2; {resolved})"
                  + ("  (identical to the oracle here)" if same else
                     "  rejected" if both > 1.0 or rejected else "  ADMITTED"))
    return 1 if false_rejects else 0


if __name__ == "__main__":
    sys.exit(main())
