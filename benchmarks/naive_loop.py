"""The baseline a user gets from the problem's recipe: one eager init + apply per case.

    python benchmarks/naive_loop.py PRESET OUT.npz

Same inputs as the generator (resblock.spec.derivation), seeded cases only use
Flax init exactly as the problem does; no oracle, no hashing, no HDF5 (so the
comparison favours the baseline).
"""

from __future__ import annotations

import sys
import time

t0 = time.perf_counter()


def main(preset: str, out: str | None) -> None:
    import jax
    import numpy as np

    from resblock.generator.grid import preset_cases
    from resblock.spec.derivation import derive_random_variables, derive_x
    from resblock.spec.reference import BasicBlock

    ys = {}
    with jax.default_matmul_precision("highest"):
        for case in preset_cases(preset):
            x = derive_x(case)
            model = BasicBlock(features=case.features)
            if case.params_source == "init":
                variables = model.init(jax.random.PRNGKey(case.seed), x)
            else:
                p, s = derive_random_variables(case)
                variables = {"params": p, "batch_stats": s}
            y, _ = model.apply(variables, x, mutable=["batch_stats"])
            ys[case.id] = np.asarray(y)
    if out:
        np.savez(out, **ys)
    print(f"naive {preset}: {len(ys)} cases in {time.perf_counter() - t0:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
