"""How every golden input, parameter and incoming running stat is derived (spec 5.2).

Each array is drawn from its own JAX key, seeded by the first 4 bytes (little-endian)
of SHA-256 of ``case.derivation_string(role)``: a case's data depends only on its own
fields, so adding a case never changes another's (ONNX's single RNG stream did). The
key is independent of the seeded family's parameter-init key ``PRNGKey(seed)``.

All draws run on the CPU backend, whatever device later runs the forward, so they are
bit-identical for a given JAX version and PRNG configuration (recorded in metadata).
JAX is imported where a draw needs it: the derivation itself (:func:`derive_x`,
:func:`derive_random_variables`) also runs with other ``draws``, such as the NumPy draws
of the graders' mode (:mod:`resblock.spec.secret`), without JAX.
"""

from __future__ import annotations

import hashlib

import numpy as np

from resblock.spec.cases import INPUTS, Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES


def key_seed(case: Case, role: str) -> int:
    digest = hashlib.sha256(case.derivation_string(role).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def _cpu():
    import jax

    return jax.local_devices(backend="cpu")[0]


class ExactDraws:
    """The normative draws: one ``jax.random`` call per array, on the CPU backend."""

    def normal(self, case, role, shape):
        import jax

        with jax.default_device(_cpu()):
            k = jax.random.PRNGKey(key_seed(case, role))
            return np.asarray(jax.random.normal(k, shape, dtype=np.float32))

    def uniform(self, case, role, shape, lo, hi):
        import jax

        with jax.default_device(_cpu()):
            k = jax.random.PRNGKey(key_seed(case, role))
            return np.asarray(jax.random.uniform(k, shape, np.float32, lo, hi))


_EXACT = ExactDraws()


def _normal(case, role, shape, draws=_EXACT):
    return draws.normal(case, role, shape)


def _uniform(case, role, shape, lo, hi, draws=_EXACT):
    return draws.uniform(case, role, shape, lo, hi)


def derive_x(case: Case, draws=_EXACT) -> np.ndarray:
    """The case's input x, float32 (N, H, W, C), per the INPUTS table."""
    shape = case.x_shape
    z = _normal(case, "x", shape, draws)
    if case.inputs == "normal":
        return z
    if case.inputs == "lowamp":
        return (np.float32(1e-3) * z).astype(np.float32)
    if case.inputs == "large":
        return (np.float32(1e3) * z).astype(np.float32)
    if case.inputs == "offset":
        o = _uniform(case, "x/offset", (case.features,), -64.0, 64.0, draws)
        return (z + o).astype(np.float32)
    if case.inputs == "zeroinit":
        return np.maximum(z, np.float32(0.0))
    if case.inputs == "deadchan":
        return z
    raise AssertionError(case.inputs)  # Case.__post_init__ already refused it


def derive_y_bar(case: Case, draws=_EXACT) -> np.ndarray:
    """The case's output cotangent ``y_bar`` (spec 10.1): ``N(key_y_bar, (N,H,W,F))``,
    float32, drawn from its own role like every other array (it changes nothing else)."""
    return _normal(case, "y_bar", case.x_shape, draws)


def derive_random_variables(case: Case, draws=_EXACT) -> tuple[dict, dict]:
    """Explicit non-init (params, batch_stats) for the functional and stress families.

    kernel ~ N(0,1)/sqrt(9C) (init scale, not truncated); ``Conv_0`` bias ~ 0.5 a N(0,1)
    with ``a`` the amplitude of the input kind (1e-3 for lowamp, 1e3 for large, else 1:
    a bias at the scale of the conv output keeps the channel mean comparable to its
    spread, so a low-amplitude case still sees epsilon and not only cancellation);
    ``Conv_1`` bias ~ 0.5 N(0,1);
    BN scale ~ U(0.25, 2); BN bias ~ 0.5 N(0,1); running mean ~ 0.5 N(0,1);
    running var ~ U(0.5, 2).
    """
    c = f = case.features
    params: dict = {}
    for name in PARAM_NAMES:
        layer, leaf = name.split("/")
        if leaf == "kernel":
            v = _normal(case, name, (3, 3, c, f), draws) / np.float32(np.sqrt(9.0 * c))
        elif layer == "Conv_0":
            amp = np.float32(0.5 * INPUTS[case.inputs]["amplitude"])
            v = amp * _normal(case, name, (f,), draws)
        elif layer.startswith("Conv") or leaf == "bias":
            v = np.float32(0.5) * _normal(case, name, (f,), draws)
        else:  # BatchNorm scale
            v = _uniform(case, name, (f,), 0.25, 2.0, draws)
        params.setdefault(layer, {})[leaf] = v.astype(np.float32)
    stats: dict = {}
    for name in STAT_NAMES:
        layer, leaf = name.split("/")
        if leaf == "mean":
            v = np.float32(0.5) * _normal(case, "batch_stats/" + name, (f,), draws)
        else:
            v = _uniform(case, "batch_stats/" + name, (f,), 0.5, 2.0, draws)
        stats.setdefault(layer, {})[leaf] = v.astype(np.float32)
    return params, stats


def derive_variables(case: Case) -> tuple[dict, dict]:
    """(params, batch_stats) of the case: Flax init for 'init', derived otherwise; the
    'zeroinit' and 'deadchan' input kinds then zero a BatchNorm's scale and bias."""
    if case.params_source == "init":
        import jax

        from resblock.spec.reference import init_variables

        with jax.default_device(_cpu()):
            params, stats = init_variables(case.seed, case.features)
    else:
        params, stats = derive_random_variables(case)
    return zero_batch_norms(case, params), stats


def zero_batch_norms(case: Case, params: dict) -> dict:
    """The BatchNorm scales and biases that the case's input kind sets to 0 (a copy)."""
    if case.inputs not in ("zeroinit", "deadchan"):
        return params
    params = {layer: {leaf: np.array(v, np.float32) for leaf, v in leaves.items()}
              for layer, leaves in params.items()}
    if case.inputs == "zeroinit":
        params["BatchNorm_1"]["scale"][:] = 0.0
        params["BatchNorm_1"]["bias"][:] = 0.0
    else:
        params["BatchNorm_0"]["scale"][0] = 0.0
        params["BatchNorm_0"]["bias"][0] = 0.0
    return params


def prng_config() -> dict:
    """The PRNG settings that change derived bits; recorded in golden metadata."""
    import jax

    return {
        "default_prng_impl": str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }


# The running variance of BatchNorm_1's channel 0 in every inference case: epsilon / 10.
NEAR_ZERO_VAR = 1e-6


def derive_running_stats(case: Case, draws=_EXACT) -> dict:
    """The running statistics an inference case normalises with (spec 12.2), drawn from
    their own roles ``inference/<BatchNorm_i>/{mean,var}`` so that they differ from the
    batch's and from ``batch_stats_in``: with ``a`` the input amplitude,
    ``mean = f32(4 a) * N(key, (F,))`` (large next to the spread, so subtracting first
    and folding differ and a folded bias without the conv bias shows), ``var = f32(a^2) *
    U(key, (F,), 0.25, 4)``, then ``BatchNorm_1``'s channel 0 set to variance ``1e-6`` and
    mean 0 (a variance near 0 next to epsilon: epsilon's size and placement, and a
    variance taken for a standard deviation, show; in the last BatchNorm, so that its gain
    of ~300 does not feed the second convolution; centred, so that the ReLU after it keeps
    the elements of either sign of the convolution output instead of all or none)."""
    a = INPUTS[case.inputs]["amplitude"]
    stats: dict = {}
    for name in STAT_NAMES:
        layer, leaf = name.split("/")
        role = "inference/" + name
        if leaf == "mean":
            v = np.float32(4.0 * a) * _normal(case, role, (case.features,), draws)
            if layer == "BatchNorm_1":  # centred where the gain is ~300: both signs show
                v[0] = np.float32(0.0)
        else:
            v = np.float32(a * a) * _uniform(case, role, (case.features,), 0.25, 4.0, draws)
            if layer == "BatchNorm_1":  # the last: its gain of ~300 amplifies only y
                v[0] = np.float32(NEAR_ZERO_VAR)
        stats.setdefault(layer, {})[leaf] = v.astype(np.float32)
    return stats
