"""The GPU path's full float32 precision, checked on a CPU (issue 12, item 10): whatever
device runs the reference, its forward is traced with matmul/convolution precision
"highest" (no TF32), both in the jit path and in the compile worker's ahead-of-time path,
and only ``--precision default`` leaves JAX's default in force."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from resblock.generator import engine
from resblock.spec import reference
from resblock.spec.cases import Case

CASE = Case("functional", "normal", 1, 3, 3, 2, 0)
OTHER = Case("functional", "normal", 1, 2, 3, 2, 0)  # another shape: traced again


@pytest.fixture
def precision_seen(monkeypatch):
    """The default matmul precision in force each time the forward is traced."""
    seen = []
    original = reference.apply_block

    def spy(*args, **kwargs):
        seen.append(jax.config.jax_default_matmul_precision)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "apply_block", spy)
    return seen


@pytest.mark.parametrize("precision, expected", [("highest", "highest"), ("default", None)])
def test_the_forward_is_traced_at_full_precision(precision_seen, precision, expected):
    from resblock.generator.batched import derive_cases

    ((x, params, stats),) = derive_cases([CASE])
    runner = engine.ReferenceRunner(precision=precision)
    y, _ = runner(x, params, stats)
    assert np.all(np.isfinite(np.asarray(y)))
    engine.compile_forward(OTHER, precision)  # the compile worker's path
    assert precision_seen == [expected, expected]
