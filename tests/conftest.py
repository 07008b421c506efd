"""Shared test helpers: seeded random block cases with non-init parameters."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.generator.grid import preset_cases
from resblock.generator.run import generate


def random_case(seed, batch, height, width, features, scale=1.0):
    """``(x, params, batch_stats)`` as NumPy float32, drawn from the case's own fields.

    Parameters are deliberately far from Flax's init so that no term can hide: non-zero
    conv bias, BN scale in [0.5, 2), non-zero BN bias, running mean/var away from 0/1,
    random (so non-symmetric) kernels. ``scale`` multiplies conv kernels and conv biases;
    a small scale gives conv outputs of variance ~scale**2, which reveals epsilon
    mistakes, while keeping the mean/spread ratio (and so the conditioning of the
    single-pass variance) unchanged. x is N(0, 1).
    """
    rng = np.random.default_rng([seed, batch, height, width, features, round(scale * 1e6)])
    f = features

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(lo, hi):
        return rng.uniform(lo, hi, f).astype(np.float32)

    params, batch_stats = {}, {}
    for i in (0, 1):
        params[f"Conv_{i}"] = {
            "kernel": normal((3, 3, f, f), scale / np.sqrt(9 * f)),
            "bias": normal(f, 0.5 * scale),
        }
        params[f"BatchNorm_{i}"] = {"scale": uniform(0.5, 2.0), "bias": normal(f, 0.5)}
        batch_stats[f"BatchNorm_{i}"] = {"mean": normal(f, 0.3), "var": uniform(0.5, 2.0)}
    x = normal((batch, height, width, f), 1.0)
    return x, params, batch_stats


@pytest.fixture(scope="session")
def make_case():
    """The :func:`random_case` factory, for test modules outside this folder."""
    return random_case


@pytest.fixture(scope="session")
def smoke_golden(tmp_path_factory):
    """The ``smoke`` preset (5 cases, 5 shape groups) with its stage data, as the committed
    set stores it, generated once; do not modify."""
    path = tmp_path_factory.mktemp("golden") / "smoke.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        meta = generate(preset_cases("smoke"), path, preset="smoke", stages=True)
    path.chmod(0o444)
    return path, meta
