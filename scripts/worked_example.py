"""Print (or write into spec/SPEC.md) the worked examples of SPEC sections 6 and 12.5.

The first values of every stage of one named committed case: its stored float32 inputs,
parameters and incoming statistics, the float64 oracle's stages and per-channel batch
statistics, the reference's float32 output and the updated statistics. The text is
generated, never edited by hand; tests/spec/test_worked_example.py fails when SPEC.md and
this script's output differ (re-run with ``--write`` after the goldens are regenerated).
The inference block (section 12.5) shows the same case's running statistics, the gain
``g`` and the folded kernel and bias of each BatchNorm, the float64 inference stages, the
Flax ``use_running_average=True`` output and its per-element bound.

Usage:
  python scripts/worked_example.py            # print the block
  python scripts/worked_example.py --write    # rewrite the marked block of spec/SPEC.md
  python scripts/worked_example.py --check    # exit 1 if SPEC.md's block differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from resblock.spec import docblocks

CASE_ID = "functional-normal-n2-4x4-f4-s0"
SPEC = Path(__file__).resolve().parent.parent / "spec" / "SPEC.md"
BLOCK = "worked-example"
BEGIN, END = docblocks.markers(BLOCK)
INFERENCE_BLOCK = "worked-inference"




def moments(stage: np.ndarray):
    cols = stage.reshape(-1, stage.shape[-1])
    mean = cols.mean(axis=0)
    return mean, np.square(cols - mean).mean(axis=0)


def render(golden_path=None, case_id: str = CASE_ID) -> str:
    """The markdown block (a fenced code block) for ``case_id`` of the committed set."""
    from resblock.golden.manifest import committed_paths
    from resblock.golden.reader import GoldenFile

    path = Path(golden_path) if golden_path else Path(committed_paths()[0])
    with GoldenFile(path) as gf:
        if case_id not in {e["id"] for e in gf.entries}:
            raise SystemExit(f"{case_id} is not in {path}: choose another case (CASE_ID)")
        gc = gf.case(case_id).detached()  # used after the file is closed
        spec_version = gf.metadata["spec_version"]
    a, p, s = gc.arrays, gc.params, gc.batch_stats_in
    first = (0, 0, 0)  # element [n=0, h=0, w=0, :] of each NHWC tensor
    rows: list[tuple[str, object]] = [("x[0,0,0,:]", gc.x[first])]
    for i in (0, 1):
        conv, bn = f"Conv_{i}", f"BatchNorm_{i}"
        rows += [(f"{conv}/kernel[0,0,0,:]", p[conv]["kernel"][0, 0, 0]),
                 (f"{conv}/bias", p[conv]["bias"]),
                 (f"{bn}/scale", p[bn]["scale"]), (f"{bn}/bias", p[bn]["bias"])]
    for bn in ("BatchNorm_0", "BatchNorm_1"):
        rows += [(f"batch_stats in {bn}/mean", s[bn]["mean"]),
                 (f"batch_stats in {bn}/var", s[bn]["var"])]
    rows.append(("", None))
    for stage in ("conv1", "bn1", "relu1", "conv2", "bn2", "sum"):
        v = a[f"oracle/stages/{stage}"]
        rows.append((f"{stage}[0,0,0,:]", v[first]))
        if stage in ("conv1", "conv2"):
            mean, var = moments(v)
            rows += [(f"  batch mean of {stage}", mean), (f"  batch var of {stage} (biased)", var)]
    rows += [("output[0,0,0,:]", a["oracle/y"][first]),
             ("y (float32 reference)[0,0,0,:]", a["y"][first]), ("", None)]
    for bn in ("BatchNorm_0", "BatchNorm_1"):
        for leaf in ("mean", "var"):
            rows.append((f"batch_stats out {bn}/{leaf}",
                         a[f"oracle/batch_stats_out/{bn}/{leaf}"]))
    n, h, w, f = gc.x.shape
    return docblocks.rows_block(
        [f"case {case_id}: N={n} H={h} W={w} C=F={f}, {n * h * w} values per channel",
         f"committed golden set, spec {spec_version}"], rows)


def render_inference(golden_path=None, case_id: str = CASE_ID) -> str:
    """The markdown block of the inference worked example (SPEC 12.5) for ``case_id``."""
    from resblock.golden.manifest import committed_paths
    from resblock.golden.reader import GoldenFile
    from resblock.spec import inference, tolerance

    path = Path(golden_path) if golden_path else Path(committed_paths()[0])
    with GoldenFile(path) as gf:
        gc = gf.case(case_id).detached()
        spec_version = gf.metadata["spec_version"]
    p, rs = gc.params, gc.running_stats
    ref = inference.forward(gc.x, p, rs)
    first = (0, 0, 0)
    rows: list[tuple[str, object]] = []
    for i in (0, 1):
        conv, bn = f"Conv_{i}", f"BatchNorm_{i}"
        g = inference.bn_gain(p[bn]["scale"], rs[bn]["var"])
        rows += [(f"running {bn}/mean", rs[bn]["mean"]), (f"running {bn}/var", rs[bn]["var"]),
                 ("  g = scale / sqrt(var + eps)", g),
                 (f"  folded {conv}/kernel[0,0,0,:]", p[conv]["kernel"][0, 0, 0] * g),
                 (f"  folded {conv}/bias", (p[conv]["bias"] - rs[bn]["mean"]) * g
                  + p[bn]["bias"])]
    rows.append(("", None))
    for stage in ("conv1", "bn1", "relu1", "conv2", "bn2", "sum"):
        rows.append((f"{stage}[0,0,0,:]", ref.stages[stage][first]))
    bound = gc.inference_bound(tolerance.profile("fp32"))
    rows += [("output[0,0,0,:]", ref.y[first]),
             ("y (float32 reference)[0,0,0,:]", gc.arrays["inference/y"][first]),
             ("bound (fp32)[0,0,0,:]", bound[first])]
    return docblocks.rows_block(
        [f"case {case_id} in inference mode: x and parameters as in section 6, the "
         "running statistics of 12.2", f"committed golden set, spec {spec_version}"], rows)


def spec_block(text: str) -> str:
    """The text between the markers of SPEC.md (without the markers)."""
    return docblocks.block(text, BLOCK)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the block in spec/SPEC.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if SPEC.md differs")
    ap.add_argument("--golden", default=None, help="golden file (default: the committed set)")
    ap.add_argument("--case", default=CASE_ID)
    args = ap.parse_args(argv)
    block = render(args.golden, args.case)
    inf = render_inference(args.golden, args.case)
    text = SPEC.read_text("utf-8")
    if args.write:
        docblocks.write_block(SPEC, BLOCK, block)
        docblocks.write_block(SPEC, INFERENCE_BLOCK, inf)
        print(f"wrote the worked examples of {args.case} into {SPEC}")
        return 0
    if args.check:
        if spec_block(text) != block or docblocks.block(text, INFERENCE_BLOCK) != inf:
            print(f"{SPEC}: the worked example differs from the goldens; "
                  "run: python scripts/worked_example.py --write", file=sys.stderr)
            return 1
        return 0
    print(block + "\n" + inf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
