"""Tests for spec/reference.py: the Flax BasicBlock, init_variables, apply_block and the
problem's seeded API ``resnet_basic_forward``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resblock.errors import SpecError
from resblock.spec import oracle
from resblock.spec.constants import MOMENTUM
from resblock.spec.reference import (
    BasicBlock,
    apply_block,
    check_channels,
    full_precision,
    init_variables,
    resnet_basic_forward,
)


def _leaves(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(a)
            for path, a in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("features", [1, 4])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (3, 5), (9, 2)])
def test_init_variables_equals_flax_init_on_any_input_shape(seed, features, hw):
    """The 1x1 dummy-input claim: parameters depend on features only, bit for bit."""
    x = jnp.ones((1, *hw, features), jnp.float32)
    v = BasicBlock(features).init(jax.random.PRNGKey(seed), x)
    params, stats = init_variables(seed, features)
    want_p, want_s = _leaves(v["params"]), _leaves(v["batch_stats"])
    got_p, got_s = _leaves(params), _leaves(stats)
    assert got_p.keys() == want_p.keys() and got_s.keys() == want_s.keys()
    for k in want_p:
        assert got_p[k].dtype == want_p[k].dtype == np.float32
        np.testing.assert_array_equal(got_p[k], want_p[k], err_msg=k)
    for k in want_s:
        np.testing.assert_array_equal(got_s[k], want_s[k], err_msg=k)


def test_init_variables_differ_across_seeds():
    a, _ = init_variables(0, 4)
    b, _ = init_variables(1, 4)
    assert not np.array_equal(a["Conv_0"]["kernel"], b["Conv_0"]["kernel"])
    assert not np.array_equal(a["Conv_0"]["kernel"], a["Conv_1"]["kernel"])


def test_flax_running_stats_update_is_momentum_times_old_plus_batch(make_case):
    """new = 0.99 * old + 0.01 * batch, with the biased (divide by N*H*W) variance."""
    x, params, stats = make_case(11, 1, 2, 2, 3)  # 4 values per channel: n/(n-1) = 4/3
    model = BasicBlock(3)
    with full_precision():
        _, mutated = model.apply({"params": params, "batch_stats": stats}, x,
                                 mutable=["batch_stats", "intermediates"],
                                 capture_intermediates=True)
    inter = mutated["intermediates"]
    new = mutated["batch_stats"]
    assert MOMENTUM == 0.99
    for i in (0, 1):
        z = np.asarray(inter[f"Conv_{i}"]["__call__"][0], np.float64)
        mean = z.mean(axis=(0, 1, 2))
        var = np.square(z - mean).mean(axis=(0, 1, 2))  # biased
        old_m = np.asarray(stats[f"BatchNorm_{i}"]["mean"], np.float64)
        old_v = np.asarray(stats[f"BatchNorm_{i}"]["var"], np.float64)
        got_m = np.asarray(new[f"BatchNorm_{i}"]["mean"], np.float64)
        got_v = np.asarray(new[f"BatchNorm_{i}"]["var"], np.float64)
        np.testing.assert_allclose(got_m, 0.99 * old_m + 0.01 * mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got_v, 0.99 * old_v + 0.01 * var, rtol=0, atol=1e-6)
        # and not the other conventions (PyTorch momentum, unbiased variance)
        assert np.max(np.abs(got_m - (0.01 * old_m + 0.99 * mean))) > 1e-2
        unbiased = var * 4 / 3
        assert np.max(np.abs(got_v - (0.99 * old_v + 0.01 * unbiased))) > 1e-4


def test_apply_block_uses_batch_statistics_not_running_ones(make_case):
    """Training mode: changing the incoming running stats never changes y."""
    x, params, stats = make_case(3, 2, 3, 3, 2)
    y1, _ = apply_block(x, params, stats)
    shifted = jax.tree_util.tree_map(lambda a: a + 5.0, stats)
    y2, new2 = apply_block(x, params, shifted)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert np.asarray(y1).shape == (2, 3, 3, 2)
    assert np.all(np.asarray(y1) >= 0)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_seeded_api_on_the_worked_example(seed):
    """x of shape (4, 4, 4), features 4 -> 64 values, equal to the oracle on x[None]."""
    x = np.random.default_rng(seed).standard_normal((4, 4, 4)).astype(np.float32)
    out = np.asarray(resnet_basic_forward(seed, x, 4))
    assert out.shape == (64,)
    assert out.dtype == np.float32
    params, stats = init_variables(seed, 4)
    ref = oracle.forward(x[None], params, stats)
    np.testing.assert_allclose(out, ref.y.reshape(-1), rtol=0, atol=1e-5)
    # flattening is (h, w, c) order of the (1, H, W, F) output
    np.testing.assert_allclose(out.reshape(4, 4, 4), ref.y[0], rtol=0, atol=1e-5)
    y, _ = apply_block(x[None], params, stats)
    np.testing.assert_allclose(out, np.asarray(y).reshape(-1), rtol=0, atol=1e-6)


def test_seeded_api_accepts_lists_and_float64():
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    a = np.asarray(resnet_basic_forward(0, x, 2))
    b = np.asarray(resnet_basic_forward(0, x.astype(np.float32).tolist(), 2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12,)


def test_seeded_api_refuses_c_not_equal_features():
    x = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(SpecError) as e:
        resnet_basic_forward(0, x, 4)
    msg = str(e.value)
    assert "C=3" in msg and "features=4" in msg
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4, 4), (16,)])
def test_seeded_api_refuses_non_3d_x(shape):
    with pytest.raises(SpecError, match="3-D"):
        resnet_basic_forward(0, np.zeros(shape, np.float32), 4)


def test_check_channels():
    check_channels((2, 3, 5), 5)
    with pytest.raises(SpecError, match="features must be >= 1"):
        check_channels((2, 3, 0), 0)
    with pytest.raises(SpecError, match="C=2 channels but features=5"):
        check_channels((1, 3, 3, 2), 5)


def test_apply_inference_normalises_with_the_given_statistics():
    """``use_running_average=True``: y from the running statistics (spec section 12),
    within the inference budgets of spec/inference.py, and unlike the training block."""
    from resblock.spec import inference, tolerance
    from resblock.spec.cases import Case
    from resblock.spec.derivation import derive_random_variables, derive_running_stats
    from resblock.spec.derivation import derive_x as _derive_x
    from resblock.spec.reference import apply_block, apply_inference

    c = Case("functional", "normal", 2, 4, 4, 3, 0)
    x = _derive_x(c)
    params, stats = derive_random_variables(c)
    running = derive_running_stats(c)
    y = np.asarray(apply_inference(x, params, running))
    ref = inference.forward(x, params, running)
    b = inference.budgets(x, params, running, ref.stages)
    assert tolerance.max_score(y, ref.y, b.bound("output", 0.0)) <= 1.0
    assert not np.allclose(y, np.asarray(apply_block(x, params, running)[0]))
