"""Recipe: dm-haiku layers (``hk.Conv2D``, ``hk.BatchNorm``) under ``hk.transform_with_state``.

    resblock check --impl examples/recipes/recipe_haiku.py:forward

Haiku is NHWC with HWIO kernels (``w``) like the spec, and ``hk.BatchNorm(decay_rate=0.99)``
keeps 0.99 of the old value, as Flax does. What to set:

* ``hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.99, eps=1e-5)``
  (scale and offset are not optional; ``eps`` defaults to 1e-5 already) and call it with
  ``is_training=True``.
* ``hk.Conv2D(..., padding="SAME", with_bias=True)`` (Haiku's defaults).
* Loading existing statistics: the moving averages are ``hk.ExponentialMovingAverage``
  states (``hidden``, ``average``, ``counter``) with zero-debiasing: each update stores
  ``average = hidden / (1 - decay**counter)``. Loading the incoming statistics into
  ``hidden`` with ``counter = 0`` gives ``average = (0.99 * old + 0.01 * batch) / 0.01``,
  100 times the spec's value (the kit names ``haiku_zero_debias``). Load them with a
  large ``counter`` (here 10_000, where ``1 - 0.99**counter == 1`` in float32), so
  ``average == hidden``.
* Haiku's variance is ``E[x^2] - E[x]^2`` without Flax's clip at 0; a round-off
  negative value is within the tolerance.
* ``jax.default_matmul_precision("highest")``: full float32 convolutions on GPUs.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

SETTLED_COUNTER = 10_000  # 1 - 0.99**SETTLED_COUNTER rounds to 1 in float32


def block(x):
    f = x.shape[-1]
    conv = dict(kernel_shape=3, padding="SAME", with_bias=True)
    bn = dict(create_scale=True, create_offset=True, decay_rate=0.99, eps=1e-5)
    h = hk.Conv2D(f, name="Conv_0", **conv)(x)
    h = jax.nn.relu(hk.BatchNorm(name="BatchNorm_0", **bn)(h, is_training=True))
    h = hk.Conv2D(f, name="Conv_1", **conv)(h)
    h = hk.BatchNorm(name="BatchNorm_1", **bn)(h, is_training=True)
    return jax.nn.relu(h + x)


model = hk.without_apply_rng(hk.transform_with_state(block))


def forward(x, params, batch_stats):
    x = jnp.asarray(x)
    hk_params, hk_state = model.init(jax.random.PRNGKey(0), x)
    for conv in ("Conv_0", "Conv_1"):
        hk_params[conv] = {"w": jnp.asarray(params[conv]["kernel"]),
                           "b": jnp.asarray(params[conv]["bias"])}
    for bn in ("BatchNorm_0", "BatchNorm_1"):
        shape = hk_params[bn]["scale"].shape  # (1, 1, 1, F)
        hk_params[bn] = {"scale": jnp.reshape(params[bn]["scale"], shape),
                         "offset": jnp.reshape(params[bn]["bias"], shape)}
        for leaf in ("mean", "var"):
            old = jnp.reshape(batch_stats[bn][leaf], shape)
            hk_state[f"{bn}/~/{leaf}_ema"] = {
                "counter": jnp.asarray(SETTLED_COUNTER, jnp.int32),
                "hidden": old, "average": old}
    with jax.default_matmul_precision("highest"):
        y, new_state = model.apply(hk_params, hk_state, x)
    stats = {bn: {leaf: np.asarray(new_state[f"{bn}/~/{leaf}_ema"]["average"]).reshape(-1)
                  for leaf in ("mean", "var")}
             for bn in ("BatchNorm_0", "BatchNorm_1")}
    return np.asarray(y), stats
