"""SPEC.md 3.4's stated facts, checked on the Flax reference itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flax")

from resblock.spec.reference import apply_block  # noqa: E402


def _np(tree):
    return {k: {kk: np.asarray(v) for kk, v in d.items()} for k, d in tree.items()}


def test_output_never_depends_on_incoming_running_stats(make_case):
    x, params, stats = make_case(0, 2, 3, 5, 4)
    other = {b: {"mean": s["mean"] + 7.0, "var": s["var"] * 3.0} for b, s in stats.items()}
    y1, _ = apply_block(x, params, stats)
    y2, _ = apply_block(x, params, other)
    assert np.array_equal(np.asarray(y1), np.asarray(y2))


def test_one_value_per_channel(make_case):
    x, params, stats = make_case(0, 1, 1, 1, 3)
    y, new = apply_block(x, params, stats)
    want = np.maximum(x + params["BatchNorm_1"]["bias"], 0)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6, atol=1e-6)
    for b, s in _np(new).items():
        np.testing.assert_allclose(s["var"], 0.99 * stats[b]["var"], rtol=1e-6)


def test_seeded_api_starts_from_init_stats(make_case):
    x, params, _ = make_case(1, 1, 4, 4, 2)
    init = {b: {"mean": np.zeros(2, np.float32), "var": np.ones(2, np.float32)}
            for b in ("BatchNorm_0", "BatchNorm_1")}
    _, new = apply_block(x, params, init)
    # conv1's batch statistics, in float64 from the same inputs
    h = x.astype(np.float64)
    k, b = params["Conv_0"]["kernel"].astype(np.float64), params["Conv_0"]["bias"]
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv1 = sum(hp[:, i:i + 4, j:j + 4, :] @ k[i, j] for i in range(3) for j in range(3)) + b
    mean, var = conv1.mean(axis=(0, 1, 2)), conv1.var(axis=(0, 1, 2))
    got = _np(new)["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], 0.01 * mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["var"], 0.99 + 0.01 * var, rtol=1e-5)
