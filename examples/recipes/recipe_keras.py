"""Recipe: Keras 3 layers (``Conv2D``, ``BatchNormalization``), any Keras backend.

    resblock check --impl examples/recipes/recipe_keras.py:forward

Keras is NHWC with HWIO kernels, like the spec, and its momentum has Flax's meaning
(weight of the old value: ``moving = 0.99 * moving + 0.01 * batch``) with the biased
variance. What differs from Keras' defaults:

* ``BatchNormalization(epsilon=1e-5)``: Keras' default is 1e-3 (the kit names
  ``epsilon_1e3`` otherwise).
* ``Conv2D(padding="same")``: Keras' default is ``"valid"``.
* Call the block with ``training=True``: BatchNorm then normalises with the batch's
  statistics and updates ``moving_mean``/``moving_variance``.
* On GPUs with the JAX backend, keep convolutions in full float32
  (``jax.default_matmul_precision("highest")``); with the torch backend, turn TF32 off.

The backend defaults to JAX here (``KERAS_BACKEND`` overrides it). Name your own file
anything but ``keras.py``: a file of that name shadows the ``keras`` package.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def build(features):
    x = keras.Input((None, None, features))
    conv = dict(kernel_size=3, padding="same", use_bias=True)
    bn = dict(momentum=0.99, epsilon=1e-5)
    h = keras.layers.Conv2D(features, name="Conv_0", **conv)(x)
    h = keras.layers.BatchNormalization(name="BatchNorm_0", **bn)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(features, name="Conv_1", **conv)(h)
    h = keras.layers.BatchNormalization(name="BatchNorm_1", **bn)(h)
    y = keras.layers.ReLU()(keras.layers.Add()([h, x]))
    return keras.Model(x, y)


def forward(x, params, batch_stats):
    model = build(x.shape[-1])
    for name in ("Conv_0", "Conv_1"):  # HWIO kernels load as they are
        model.get_layer(name).set_weights([params[name]["kernel"], params[name]["bias"]])
    for name in ("BatchNorm_0", "BatchNorm_1"):  # gamma, beta, moving mean, moving var
        p, s = params[name], batch_stats[name]
        model.get_layer(name).set_weights([p["scale"], p["bias"], s["mean"], s["var"]])
    if keras.backend.backend() == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            y = model(x, training=True)
    else:
        y = model(x, training=True)
    stats = {}
    for name in ("BatchNorm_0", "BatchNorm_1"):
        layer = model.get_layer(name)
        stats[name] = {"mean": keras.ops.convert_to_numpy(layer.moving_mean.value),
                       "var": keras.ops.convert_to_numpy(layer.moving_variance.value)}
    return np.asarray(keras.ops.convert_to_numpy(y), np.float32), stats
