"""Print the scores behind spec/DESIGN.md section 7: every admitted float32 form of the
inference block, the stored Flax reference, a PyTorch ``eval()`` block, and every
inference pitfall's float32 twin, judged on the inference cases of a golden set.

    python scripts/inference_scores.py [GOLDEN.h5 [PROFILE]]  # default: committed, fp32

Per row: the worst per-element score, the worst aggregate score (spec 8.5), the cases
rejected and, for a pitfall, the cases whose diagnosis names it. A case outside the
profile (spec 8.6: a value a conforming port stores overflows the low type) is skipped,
as ``resblock check`` skips it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _nchw(fn):
    """An NCHW/OIHW ``infer`` called with NHWC/HWIO arrays."""
    def nhwc(x, params, stats):
        p = {k: dict(v) for k, v in params.items()}
        for conv in ("Conv_0", "Conv_1"):
            p[conv]["kernel"] = np.transpose(p[conv]["kernel"], (3, 2, 0, 1))
        return np.transpose(fn(np.transpose(x, (0, 3, 1, 2)), p, stats), (0, 2, 3, 1))
    return nhwc


def rows():
    from resblock.conformance.mistakes.variants_inference import (
        FORMS,
        INFERENCE_PITFALLS,
        make_infer,
    )

    out = [(f"numpy {f}", make_infer(f), None) for f in FORMS]
    out.append(("flax use_running_average=True (stored)", None, None))
    try:
        sys.path.insert(0, str(ROOT / "examples"))
        from torch_eval_nchw import infer as torch_infer

        torch_nhwc = _nchw(torch_infer)

        out.append(("pytorch eval() (examples/torch_eval_nchw.py)", torch_nhwc, None))
        import torch_half_eval_nchw as half

        for name in ("infer_fp16", "infer_fp16_fused", "infer_bf16"):
            out.append((f"pytorch torch_half_eval_nchw.py:{name}",
                        _nchw(getattr(half, name)), None))
    except ImportError:
        pass
    out += [(p.name, make_infer(mistake=p.name), p.name) for p in INFERENCE_PITFALLS]
    return out


def main(argv) -> int:
    from resblock.conformance.mistakes.variants_inference import diagnose_inference
    from resblock.golden.reader import GoldenFile
    from resblock.spec import tolerance

    path = argv[0] if argv else ROOT / "golden" / "default.h5"
    prof = tolerance.profile(argv[1] if len(argv) > 1 else "fp32")
    with GoldenFile(path) as gf:
        cases = [gc.detached() for gc in gf.iter_cases()]
    outside = [gc for gc in cases if gc.outside_profile(prof, inference=True) is not None]
    cases = [gc for gc in cases if gc.outside_profile(prof, inference=True) is None]
    print(f"{path}: {len(cases)} inference cases, profile {prof.name}"
          + (f"; {len(outside)} outside the profile, skipped (spec 8.6)" if outside else ""))
    for gc in outside:
        print(f"  skip {gc.id}: {gc.outside_profile(prof, inference=True).reason}")
    print(f"{'implementation':48s} {'element':>10s} {'aggregate':>10s} {'rejected':>9s} "
          f"{'named':>6s} {'s/case':>7s}")
    for label, fn, pitfall in rows():
        worst_e = worst_a = 0.0
        rejected = named = 0
        t0 = time.perf_counter()
        for gc in cases:
            with np.errstate(all="ignore"):
                y = gc.arrays["inference/y"] if fn is None else fn(gc.x, gc.params,
                                                                   gc.running_stats)
            e = tolerance.max_score(y, gc.inference_reference(), gc.inference_bound(prof))
            a = gc.inference_aggregate_score(y, prof)
            worst_e, worst_a = max(worst_e, e), max(worst_a, a)
            if max(e, a) > 1.0:
                rejected += 1
                if pitfall is not None and diagnose_inference(gc, y, prof) == pitfall:
                    named += 1
        per = (time.perf_counter() - t0) / len(cases)
        print(f"{label:48s} {worst_e:10.3g} {worst_a:10.3g} {rejected:>5d}/{len(cases):<3d} "
              f"{named if pitfall else '-':>6} {per:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
