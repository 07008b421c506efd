"""The backward of the ResNet basic block by ``jax.vjp`` of a plain JAX forward (conforming).

Contract (``--api backward``, NHWC, HWIO kernels)::

    backward(x, params, batch_stats, y_bar) -> (x_bar, params_bar)

``jax.vjp`` of the training-mode forward with respect to ``x`` and ``params`` (the
running statistics are not differentiated), applied to the cotangent ``y_bar``. The
forward is written with ``lax.conv_general_dilated`` and a single-pass variance, the
convolutions pinned to full float32 precision (no TF32 on GPUs: spec section 2).
``jax.nn.relu``'s derivative at exactly 0 is 0, the spec's convention. Check it with::

    resblock check --api backward --impl examples/jax_vjp_backward.py:backward
"""

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-5


def _conv(x, kernel, bias):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + bias


def _batch_norm(y, scale, bias):
    mean = y.mean(axis=(0, 1, 2))
    var = jnp.maximum((y * y).mean(axis=(0, 1, 2)) - mean * mean, 0.0)
    return (y - mean) * (scale / jnp.sqrt(var + EPS)) + bias


def _forward(x, p):
    h = _conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    h = jax.nn.relu(_batch_norm(h, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"]))
    h = _conv(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
    h = _batch_norm(h, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"])
    return jax.nn.relu(h + x)


@jax.jit
def _vjp(x, p, y_bar):
    _, pullback = jax.vjp(_forward, x, p)
    return pullback(y_bar)


def backward(x, params, batch_stats, y_bar):
    x_bar, params_bar = _vjp(jnp.asarray(x), jax.tree_util.tree_map(jnp.asarray, params),
                             jnp.asarray(y_bar))
    return np.asarray(x_bar), jax.tree_util.tree_map(np.asarray, params_bar)
