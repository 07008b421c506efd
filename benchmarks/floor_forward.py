"""The floor of generating one real-size case (issue 19): a fresh process that imports
JAX and Flax, compiles and runs the Flax forward of the block once at the given shape,
and does nothing else (no oracle, no budgets, no file).

    python benchmarks/floor_forward.py N H W F
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    n, h, w, f = (int(v) for v in (argv or sys.argv[1:]))
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Block(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            r = x
            y = nn.Conv(self.features, (3, 3), padding="SAME")(x)
            y = nn.BatchNorm(use_running_average=False)(y)
            y = nn.relu(y)
            y = nn.Conv(self.features, (3, 3), padding="SAME")(y)
            y = nn.BatchNorm(use_running_average=False)(y)
            return nn.relu(y + r)

    x = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, f), jnp.float32)
    m = Block(f)
    variables = jax.jit(m.init)(jax.random.PRNGKey(1), jnp.zeros((1, 1, 1, f), jnp.float32))
    with jax.default_matmul_precision("highest"):
        fn = jax.jit(lambda v, x: m.apply(v, x, mutable=["batch_stats"]))
        y, new = fn(variables, x)
    jax.block_until_ready(y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
