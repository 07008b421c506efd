"""The ResNet basic block with plain ``jax.lax`` and ``jax.numpy`` (no Flax).

Contract (layout "nhwc", the kit's default)::

    forward(x, params, batch_stats) -> (y, new_batch_stats)

    x       float32 (N, H, W, C), C == F
    params  {"Conv_0": {"kernel": (3, 3, C, F), "bias": (F,)},
             "BatchNorm_0": {"scale": (F,), "bias": (F,)},
             "Conv_1": {...}, "BatchNorm_1": {...}}
    batch_stats  {"BatchNorm_0": {"mean": (F,), "var": (F,)}, "BatchNorm_1": {...}}

Returns NumPy float32 arrays. Both convolutions pass ``precision=lax.Precision.HIGHEST``:
JAX's default precision runs float32 convolutions in TF32 on A100/H100 GPUs (and in
bfloat16 passes on TPU), which misses the spec's tolerance by about 1e-3. BatchNorm uses
the biased variance, eps 1e-5 and running stats 0.99 * old + 0.01 * batch. Check it with::

    resblock check --impl examples/jax_lax.py:forward

This file imports only NumPy and JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EPS = 1e-5
MOMENTUM = 0.99  # weight of the old running value (Flax convention)


def conv3x3(x, kernel, bias):
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),  # SAME for a 3x3 kernel, zero padding
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    return y + bias


def batch_norm_train(y, bn, stats):
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))  # biased, two-pass
    out = (y - mean) * (bn["scale"] * lax.rsqrt(var + EPS)) + bn["bias"]
    new = {
        "mean": MOMENTUM * stats["mean"] + (1.0 - MOMENTUM) * mean,
        "var": MOMENTUM * stats["var"] + (1.0 - MOMENTUM) * var,
    }
    return out, new


@jax.jit
def _forward(x, params, batch_stats):
    h = conv3x3(x, params["Conv_0"]["kernel"], params["Conv_0"]["bias"])
    h, s0 = batch_norm_train(h, params["BatchNorm_0"], batch_stats["BatchNorm_0"])
    h = jax.nn.relu(h)
    h = conv3x3(h, params["Conv_1"]["kernel"], params["Conv_1"]["bias"])
    h, s1 = batch_norm_train(h, params["BatchNorm_1"], batch_stats["BatchNorm_1"])
    return jax.nn.relu(h + x), {"BatchNorm_0": s0, "BatchNorm_1": s1}


def _f32(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)


def forward(x, params, batch_stats):
    y, stats = _forward(_f32(x), _f32(params), _f32(batch_stats))
    return np.asarray(y), jax.tree_util.tree_map(np.asarray, stats)
