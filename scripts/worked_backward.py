"""Print (or write into spec/SPEC.md) the worked example of the backward, SPEC section 10.5.

The first values of every cotangent of one committed case: its ``y_bar``, the float64
oracle backward stage by stage (spec/backward.py), the gradients with their stored fp32
budgets, and the float32 reference's (``jax.vjp``). Generated, never edited by hand;
tests/spec/test_worked_backward.py fails when SPEC.md and this output differ (re-run with
``--write`` after the goldens are regenerated).

Usage:
  python scripts/worked_backward.py            # print the block
  python scripts/worked_backward.py --write    # rewrite the marked block of spec/SPEC.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from resblock.spec import docblocks

CASE_ID = "functional-normal-n2-4x4-f4-s0"
SPEC = Path(__file__).resolve().parent.parent / "spec" / "SPEC.md"
BLOCK = "worked-backward"
BEGIN, END = docblocks.markers(BLOCK)




def render(golden_path=None, case_id: str = CASE_ID) -> str:
    from resblock.golden.manifest import committed_paths
    from resblock.golden.reader import GoldenFile
    from resblock.spec import backward

    path = Path(golden_path) if golden_path else Path(committed_paths()[0])
    with GoldenFile(path) as gf:
        gc = gf.case(case_id).detached()  # used after the file is closed
        spec_version = gf.metadata["spec_version"]
    a = gc.arrays
    bw = backward.backward(gc.x, gc.params, gc.batch_stats_in, gc.y_bar)
    st, cot = bw.forward.stages, bw.cotangents
    first = (0, 0, 0)
    zhat2 = (st["conv2"] - st["conv2"].mean((0, 1, 2))) / np.sqrt(
        st["conv2"].var((0, 1, 2)) + 1e-5)
    rows = [("y_bar[0,0,0,:]", gc.y_bar[first]),
            ("sum[0,0,0,:] (> 0 passes)", st["sum"][first]),
            ("sum_bar[0,0,0,:]", cot["sum"][first]),
            ("  mean(sum_bar) per channel", cot["sum"].mean((0, 1, 2))),
            ("  mean(sum_bar zhat) per channel", (cot["sum"] * zhat2).mean((0, 1, 2))),
            ("conv2_bar[0,0,0,:]", cot["conv2"][first]),
            ("relu1_bar[0,0,0,:]", cot["relu1"][first]),
            ("bn1_bar[0,0,0,:] (bn1 > 0 passes)", cot["bn1"][first]),
            ("conv1_bar[0,0,0,:]", cot["conv1"][first]), ("", None)]
    for name, arr in [("x_bar[0,0,0,:]", "x"), ("Conv_0/kernel_bar[1,1,0,:]", "Conv_0/kernel"),
                      ("Conv_0/bias_bar", "Conv_0/bias"),
                      ("BatchNorm_0/scale_bar", "BatchNorm_0/scale"),
                      ("BatchNorm_0/bias_bar", "BatchNorm_0/bias"),
                      ("Conv_1/kernel_bar[1,1,0,:]", "Conv_1/kernel"),
                      ("Conv_1/bias_bar", "Conv_1/bias"),
                      ("BatchNorm_1/scale_bar", "BatchNorm_1/scale"),
                      ("BatchNorm_1/bias_bar", "BatchNorm_1/bias")]:
        where = "x" if arr == "x" else f"params/{arr}"
        idx = first if arr == "x" else ((1, 1, 0) if arr.endswith("kernel") else ())
        rows += [(name, a[f"oracle/grad/{where}"][idx]),
                 ("  budget (fp32)", a[f"budget/grad/{where}"][idx]),
                 ("  float32 reference (jax.vjp)", a[f"grad/{where}"][idx])]
    return docblocks.rows_block([f"case {case_id}, committed golden set, spec {spec_version}"],
                                rows)


def spec_block(text: str) -> str:
    return docblocks.block(text, BLOCK)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the block in spec/SPEC.md")
    args = ap.parse_args(argv)
    block = render()
    if args.write:
        docblocks.write_block(SPEC, BLOCK, block)
        print(f"wrote the backward worked example of {CASE_ID} into {SPEC}")
        return 0
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
