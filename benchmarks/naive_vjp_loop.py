"""The backward baseline: one eager ``jax.vjp`` of the Flax block per case.

    python benchmarks/naive_vjp_loop.py PRESET OUT.npz

Same inputs and cotangents as the generator (resblock.spec.derivation, role y_bar);
no oracle, no budgets, no hashing, no HDF5 (so the comparison favours the baseline).
"""

from __future__ import annotations

import sys
import time

t0 = time.perf_counter()


def main(preset: str, out: str | None) -> None:
    import jax
    import numpy as np

    from resblock.generator.grid import preset_cases
    from resblock.spec.derivation import derive_variables, derive_x, derive_y_bar
    from resblock.spec.reference import BasicBlock

    x_bars = {}
    with jax.default_matmul_precision("highest"):
        for case in preset_cases(preset):
            x, y_bar = derive_x(case), derive_y_bar(case)
            p, s = derive_variables(case)
            model = BasicBlock(features=case.features)

            def f(xx, pp, model=model, s=s):
                return model.apply({"params": pp, "batch_stats": s}, xx,
                                   mutable=["batch_stats"])

            (_, new), vjp = jax.vjp(f, x, p)
            x_bar, _ = vjp((y_bar, jax.tree_util.tree_map(np.zeros_like, new)))
            x_bars[case.id] = np.asarray(x_bar)
    if out:
        np.savez(out, **x_bars)
    print(f"naive vjp {preset}: {len(x_bars)} cases in {time.perf_counter() - t0:.2f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
