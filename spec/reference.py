"""The reference block: the problem's Flax Linen ``BasicBlock``, verbatim in behaviour.

This module is the executable half of the normative spec (``spec/SPEC.md`` section 3).
It imports JAX and Flax; nothing on the conformance path of a non-JAX implementation
imports it.

Precision is pinned by :func:`full_precision`: every forward the kit runs goes through
``jax.default_matmul_precision("highest")`` so that GPU backends run convolutions in
true float32, never TF32 or bf16 passes (spec section 7).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resblock.errors import SpecError


class BasicBlock(nn.Module):
    """Conv3x3 -> BN(train) -> ReLU -> Conv3x3 -> BN(train) -> (+ x) -> ReLU.

    Attributes:
      features: output channels of both convolutions; must equal the input's channels
        (identity skip, no projection).
      use_running_average: BatchNorm normalises with the running statistics it is given
        and updates nothing: the inference block of spec section 12 (default: False, the
        problem's training-mode block).
    """

    features: int
    use_running_average: bool = False

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.features, kernel_size=(3, 3), padding="SAME")(x)
        y = nn.BatchNorm(use_running_average=self.use_running_average)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, kernel_size=(3, 3), padding="SAME")(y)
        y = nn.BatchNorm(use_running_average=self.use_running_average)(y)
        y = y + residual
        return nn.relu(y)


def full_precision():
    """Context manager pinning float32 convolutions to full precision (no TF32)."""
    return jax.default_matmul_precision("highest")


def check_channels(x_shape, features: int) -> None:
    """Raise SpecError unless the last axis of ``x_shape`` equals ``features``."""
    if features < 1:
        raise SpecError(f"features must be >= 1, got {features}")
    if x_shape[-1] != features:
        raise SpecError(
            f"input has C={x_shape[-1]} channels but features={features}; the basic block "
            "uses an identity skip and requires C == features (no projection shortcut)"
        )


def resnet_basic_forward(seed: int, x, features: int):
    """The problem's seeded API: init from ``PRNGKey(seed)``, one training-mode forward.

    Args:
      seed: integer seed of ``jax.random.PRNGKey``.
      x: array of shape (H, W, C) with C == features.
      features: output channels.

    Returns:
      The output of shape (1, H, W, features) flattened to 1-D in (h, w, c) order.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 3:
        raise SpecError(f"x must be 3-D (H, W, C), got shape {tuple(x.shape)}")
    check_channels(x.shape, features)
    x_b = x[None, ...]
    model = BasicBlock(features=features)
    with full_precision():
        variables = model.init(jax.random.PRNGKey(seed), x_b)
        out, _ = model.apply(variables, x_b, mutable=["batch_stats"])
    return out.reshape(-1)


def init_variables(seed: int, features: int):
    """Flax-initialised ``(params, batch_stats)`` for ``PRNGKey(seed)``, as NumPy arrays.

    Parameter shapes depend only on ``features`` (fan_in = 9 * C), so init runs on a
    1x1 dummy input; the values equal those of ``init`` on any (1, H, W, C) input
    (tested in tests/spec/test_reference.py).
    """
    variables = _init_fn(features)(jax.random.PRNGKey(seed))
    return _to_numpy(variables["params"]), _to_numpy(variables["batch_stats"])


_INIT_CACHE: dict = {}


def _init_fn(features: int):
    fn = _INIT_CACHE.get(features)
    if fn is None:
        model = BasicBlock(features=features)
        dummy = jnp.zeros((1, 1, 1, features), jnp.float32)
        fn = jax.jit(lambda key: model.init(key, dummy))
        _INIT_CACHE[features] = fn
    return fn


def apply_block(x, params, batch_stats):
    """One training-mode forward with explicit variables; returns ``(y, new_batch_stats)``."""
    features = np.shape(params["Conv_0"]["kernel"])[-1]
    model = BasicBlock(features=features)
    with full_precision():
        y, mutated = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"]
        )
    return y, mutated["batch_stats"]


def apply_inference(x, params, batch_stats):
    """One inference-mode forward (``use_running_average=True``, spec section 12): ``y``
    normalised with ``batch_stats``, the running statistics, which stay unchanged."""
    features = np.shape(params["Conv_0"]["kernel"])[-1]
    model = BasicBlock(features=features, use_running_average=True)
    with full_precision():
        return model.apply({"params": params, "batch_stats": batch_stats}, x)


def _to_numpy(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a), _unfreeze(tree))


def _unfreeze(tree):
    if hasattr(tree, "unfreeze"):
        return tree.unfreeze()
    if isinstance(tree, dict):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree
