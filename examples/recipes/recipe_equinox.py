"""Recipe: Equinox layers (``eqx.nn.Conv2d``, ``eqx.nn.BatchNorm``), vmapped over the batch.

    resblock check --impl examples/recipes/recipe_equinox.py:forward

Equinox layers work on one sample ``(C, H, W)``; the batch is a ``jax.vmap`` whose
``axis_name`` the BatchNorm reduces over. What differs from Equinox's defaults:

* ``eqx.nn.BatchNorm(..., mode="batch")``: the default mode ``"ema"``, on the fresh
  state each call builds, normalises with the batch statistics (right) but stores them
  as the running averages, dropping the incoming ones (wrong). The kit names it
  ``equinox_ema_mode``. In ``mode="batch"`` the stored statistics are the
  spec's running mean and biased variance (Equinox's zero-debiasing by ``1 -
  momentum**counter`` applies only to inference).
* ``momentum=0.99`` and ``eps=1e-5`` are Equinox's defaults and the spec's.
* ``eqx.nn.Conv2d(..., padding=1)`` (default 0) with ``use_bias=True``; its weight is
  OIHW ``(F, C, 3, 3)`` and its bias ``(F, 1, 1)``.
* Training mode: ``inference=False`` (the default; ``eqx.nn.inference_mode`` turns it on).
* ``jax.default_matmul_precision("highest")``: full float32 convolutions on GPUs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

BN_MODE = "batch"  # Equinox's default, "ema", is the pitfall equinox_ema_mode


class BasicBlock(eqx.Module):
    conv0: eqx.nn.Conv2d
    bn0: eqx.nn.BatchNorm
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm

    def __init__(self, features, key, mode="batch"):
        k0, k1 = jax.random.split(key)
        conv = dict(kernel_size=3, padding=1, use_bias=True)
        bn = dict(axis_name="batch", momentum=0.99, eps=1e-5, mode=mode)
        self.conv0 = eqx.nn.Conv2d(features, features, key=k0, **conv)
        self.bn0 = eqx.nn.BatchNorm(features, **bn)
        self.conv1 = eqx.nn.Conv2d(features, features, key=k1, **conv)
        self.bn1 = eqx.nn.BatchNorm(features, **bn)

    def __call__(self, x, state):  # x: one sample (C, H, W)
        h, state = self.bn0(self.conv0(x), state)
        h = jax.nn.relu(h)
        h, state = self.bn1(self.conv1(h), state)
        return jax.nn.relu(h + x), state


def load(model, state, params, batch_stats):
    """Put the kit's variables (Flax names, HWIO) into the Equinox model and state."""
    for conv, bn, flax_conv, flax_bn in (("conv0", "bn0", "Conv_0", "BatchNorm_0"),
                                         ("conv1", "bn1", "Conv_1", "BatchNorm_1")):
        p, b = params[flax_conv], params[flax_bn]
        model = eqx.tree_at(
            lambda m, c=conv, n=bn: (getattr(m, c).weight, getattr(m, c).bias,
                                     getattr(m, n).weight, getattr(m, n).bias),
            model,
            (jnp.transpose(p["kernel"], (3, 2, 0, 1)), jnp.asarray(p["bias"])[:, None, None],
             jnp.asarray(b["scale"]), jnp.asarray(b["bias"])))
        s = batch_stats[flax_bn]
        stats = (jnp.asarray(s["mean"]), jnp.asarray(s["var"]))
        layer = getattr(model, bn)
        if layer.mode == "batch":
            state = state.set(layer.batch_state_index, stats)
        else:  # "ema": loaded, but its first call replaces them with the batch's
            state = state.set(layer.ema_state_index, stats)
    return model, state


def forward(x, params, batch_stats):
    model, state = eqx.nn.make_with_state(BasicBlock)(x.shape[-1], jax.random.PRNGKey(0),
                                                      mode=BN_MODE)
    model, state = load(model, state, params, batch_stats)
    x_nchw = jnp.transpose(jnp.asarray(x), (0, 3, 1, 2))
    run = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    with jax.default_matmul_precision("highest"):
        y, state = run(x_nchw, state)
    stats = {}
    for bn, flax_bn in (("bn0", "BatchNorm_0"), ("bn1", "BatchNorm_1")):
        layer = getattr(model, bn)
        index = layer.batch_state_index if layer.mode == "batch" else layer.ema_state_index
        mean, var = state.get(index)
        stats[flax_bn] = {"mean": np.asarray(mean), "var": np.asarray(var)}
    return np.asarray(jnp.transpose(y, (0, 2, 3, 1))), stats
