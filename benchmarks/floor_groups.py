"""The compile floor of generating a small grid (issue 19): a fresh process that imports
JAX and Flax and, per shape group of a preset, compiles and runs one ``jit(vmap(apply))``
of the reference block over the group's inputs (vmapped over ``x``; one set of
parameters per group, so the convolutions stay ordinary batched ones; no oracle, no
budgets, no file). No generator that compiles once per shape can beat it by much.

    python benchmarks/floor_groups.py [PRESET]
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    preset = args[0] if args else "bench"
    import jax
    import numpy as np

    from resblock.generator.grid import group_cases, preset_cases
    from resblock.spec.reference import apply_block, full_precision

    for group in group_cases(preset_cases(preset)):
        c, k = group[0], len(group)
        f = c.features
        rng = np.random.default_rng(0)
        x = rng.standard_normal((k, *c.x_shape), np.float32)
        kern = rng.standard_normal((3, 3, f, f), np.float32) * np.float32(0.1)
        vec = np.ones((f,), np.float32)
        params = {conv: {"kernel": kern, "bias": vec * 0} for conv in ("Conv_0", "Conv_1")}
        params.update({bn: {"scale": vec, "bias": vec * 0} for bn in ("BatchNorm_0",
                                                                        "BatchNorm_1")})
        stats = {bn: {"mean": vec * 0, "var": vec} for bn in ("BatchNorm_0", "BatchNorm_1")}
        with full_precision():
            y, _ = jax.jit(jax.vmap(apply_block, in_axes=(0, None, None)))(x, params, stats)
        np.asarray(y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
