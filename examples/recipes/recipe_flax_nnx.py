"""Recipe: Flax NNX layers (``nnx.Conv``, ``nnx.BatchNorm``).

    resblock check --impl examples/recipes/recipe_flax_nnx.py:forward

NNX uses the spec's conventions (NHWC, HWIO kernels, momentum 0.99 on the old value,
epsilon 1e-5, biased single-pass variance). What to set:

* ``nnx.Conv(..., padding="SAME")`` (NNX's default padding is also "SAME"; stated
  because the spec depends on it) with ``use_bias=True`` (the default).
* Training mode: ``model.train()`` (``use_running_average=False``); after
  ``model.eval()`` BatchNorm normalises with the running averages (the kit names
  ``eval_mode_bn``).
* The updated statistics are the ``nnx.BatchStat`` variables ``mean``/``var`` after the
  call (NNX updates them in place).
* ``jax.default_matmul_precision("highest")``: full float32 convolutions on GPUs.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class BasicBlock(nnx.Module):
    def __init__(self, features, *, rngs):
        conv = dict(kernel_size=(3, 3), padding="SAME", use_bias=True, rngs=rngs)
        bn = dict(momentum=0.99, epsilon=1e-5, use_running_average=False, rngs=rngs)
        self.Conv_0 = nnx.Conv(features, features, **conv)
        self.BatchNorm_0 = nnx.BatchNorm(features, **bn)
        self.Conv_1 = nnx.Conv(features, features, **conv)
        self.BatchNorm_1 = nnx.BatchNorm(features, **bn)

    def __call__(self, x):
        h = nnx.relu(self.BatchNorm_0(self.Conv_0(x)))
        h = self.BatchNorm_1(self.Conv_1(h))
        return nnx.relu(h + x)


def forward(x, params, batch_stats):
    model = BasicBlock(x.shape[-1], rngs=nnx.Rngs(0))
    for name in ("Conv_0", "Conv_1"):
        conv = getattr(model, name)
        conv.kernel = nnx.Param(jnp.asarray(params[name]["kernel"]))
        conv.bias = nnx.Param(jnp.asarray(params[name]["bias"]))
    for name in ("BatchNorm_0", "BatchNorm_1"):
        bn = getattr(model, name)
        bn.scale = nnx.Param(jnp.asarray(params[name]["scale"]))
        bn.bias = nnx.Param(jnp.asarray(params[name]["bias"]))
        bn.mean = nnx.BatchStat(jnp.asarray(batch_stats[name]["mean"]))
        bn.var = nnx.BatchStat(jnp.asarray(batch_stats[name]["var"]))
    model.train()
    with jax.default_matmul_precision("highest"):
        y = model(jnp.asarray(x))
    stats = {name: {"mean": np.asarray(getattr(model, name).mean[...]),
                    "var": np.asarray(getattr(model, name).var[...])}
             for name in ("BatchNorm_0", "BatchNorm_1")}
    return np.asarray(y), stats
