"""Tests for spec/constants.py and spec/constants.json against the installed Flax.

Every default that Flax leaves implicit and the spec states explicitly (momentum,
epsilon, fast variance, padding, bias, init) is read back from Flax itself here, so a
Flax release that changes one of them fails this file instead of silently changing
the goldens.
"""

from __future__ import annotations

import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resblock.schemas import errors
from resblock.spec import constants
from resblock.spec.reference import BasicBlock, init_variables

C = constants.load()


def _default(cls, name):
    return inspect.signature(cls).parameters[name].default


def test_constants_validate_against_their_schema():
    assert errors(C, "spec-constants") == []
    # spec 3: the spread model, its aggregate test and the tight backward budgets; spec 4:
    # the backward's channel errors carried exactly; spec 5: relu1's error in the backward
    # model is BatchNorm_0's; spec 6: the stored budgets and spreads rounded up to 12
    # significant bits; spec 7: the transform term of the convolution budgets and spreads
    # (changes of computed values: MAJOR)
    assert C["spec_version"] == constants.SPEC_VERSION
    assert constants.SPEC_VERSION.split(".")[0] == "7"
    assert C["tolerance"]["transform"]["budget"] == 1.0
    assert C["tolerance"]["transform"]["spread"] == 2.0
    assert C["format_version"] == constants.FORMAT_VERSION


def test_module_level_names_are_read_from_the_json():
    assert constants.EPSILON == C["batch_norm"]["epsilon"] == 1e-5
    assert constants.MOMENTUM == C["batch_norm"]["momentum"] == 0.99
    assert constants.UNIT_ROUNDOFF == 2.0**-24 == C["tolerance"]["unit_roundoff"]
    assert constants.STAGES == ("conv1", "bn1", "relu1", "conv2", "bn2", "sum", "output")
    assert len(constants.PARAM_NAMES) == 8 and len(constants.STAT_NAMES) == 4


def test_batchnorm_defaults_match_flax():
    bn = C["batch_norm"]
    assert _default(nn.BatchNorm, "momentum") == bn["momentum"] == 0.99
    assert _default(nn.BatchNorm, "epsilon") == bn["epsilon"] == 1e-5
    assert _default(nn.BatchNorm, "use_fast_variance") is True
    assert bn["variance_formula"] == "max(E[x^2] - E[x]^2, 0)"  # what fast variance means
    assert _default(nn.BatchNorm, "use_scale") is True
    assert _default(nn.BatchNorm, "use_bias") is True


def test_conv_defaults_match_flax():
    conv = C["conv"]
    assert _default(nn.Conv, "padding") == "SAME"
    assert _default(nn.Conv, "use_bias") is True is conv["use_bias"]
    assert _default(nn.Conv, "strides") == 1 == conv["stride"]
    # 'SAME' for a 3x3 stride-1 window is one zero row/column on each side.
    pads = jax.lax.padtype_to_pads((7, 13), (3, 3), (1, 1), "SAME")
    assert [list(p) for p in pads] == conv["padding"] == [[1, 1], [1, 1]]


def test_stddev_correction_is_the_std_of_a_unit_normal_truncated_at_2():
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    std = math.sqrt(1 - 2 * 2 * phi / mass)
    assert C["conv"]["kernel_init"]["stddev_correction"] == pytest.approx(std, rel=1e-15)
    assert std == pytest.approx(0.87962566103423978, rel=1e-15)


@pytest.fixture(scope="module")
def large_init():
    params, _ = init_variables(0, 64)
    return params


@pytest.mark.parametrize("layer", ["Conv_0", "Conv_1"])
def test_kernel_init_is_truncated_lecun_normal_with_fan_in_9c(large_init, layer):
    c = 64
    k = np.asarray(large_init[layer]["kernel"], np.float64)
    assert k.shape == (3, 3, c, c)
    corr = C["conv"]["kernel_init"]["stddev_correction"]
    target = 1 / math.sqrt(9 * c)
    # 36864 samples: the std's standard error is ~0.4%, so 3% is a loose but sharp bound
    # (fan_in = 9*C*C or plain N(0,1) would be off by orders of magnitude).
    assert k.std() == pytest.approx(target, rel=0.03)
    assert abs(k.mean()) < 5 * target / math.sqrt(k.size)
    bound = 2 * target / corr
    assert np.max(np.abs(k)) <= bound * (1 + 1e-6)
    # the truncation is really at +-2 sigma': the extremes come close to the bound
    assert np.max(np.abs(k)) > 0.97 * bound


def test_kernel_fan_in_counts_input_channels_not_features():
    """fan_in = 9 * C (input channels): checked on a Conv with C != features."""
    c_in, f = 64, 2
    conv = nn.Conv(f, kernel_size=(3, 3), padding="SAME")
    k = conv.init(jax.random.PRNGKey(3), jnp.zeros((1, 1, 1, c_in)))["params"]["kernel"]
    k = np.asarray(k, np.float64)
    target = 1 / math.sqrt(9 * c_in)
    assert k.shape == (3, 3, c_in, f)
    assert k.std() == pytest.approx(target, rel=0.08)
    corr = C["conv"]["kernel_init"]["stddev_correction"]
    assert np.max(np.abs(k)) <= 2 * target / corr * (1 + 1e-6)


@pytest.mark.parametrize("features", [1, 3, 8])
def test_bias_and_batchnorm_inits(features):
    params, stats = init_variables(5, features)
    bn = C["batch_norm"]
    for i in (0, 1):
        np.testing.assert_array_equal(params[f"Conv_{i}"]["bias"], np.zeros(features))
        np.testing.assert_array_equal(params[f"BatchNorm_{i}"]["scale"],
                                      np.full(features, bn["scale_init"]))
        np.testing.assert_array_equal(params[f"BatchNorm_{i}"]["bias"],
                                      np.full(features, bn["bias_init"]))
        np.testing.assert_array_equal(stats[f"BatchNorm_{i}"]["mean"],
                                      np.full(features, bn["running_mean_init"]))
        np.testing.assert_array_equal(stats[f"BatchNorm_{i}"]["var"],
                                      np.full(features, bn["running_var_init"]))
        assert params[f"Conv_{i}"]["kernel"].dtype == np.float32
    assert bn["scale_init"] == 1.0 and bn["bias_init"] == 0.0
    assert bn["running_mean_init"] == 0.0 and bn["running_var_init"] == 1.0


def test_parameter_names_are_the_flax_tree():
    v = BasicBlock(2).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 2)))
    names = {f"{layer}/{leaf}" for layer, d in v["params"].items() for leaf in d}
    stats = {f"{layer}/{leaf}" for layer, d in v["batch_stats"].items() for leaf in d}
    assert names == set(constants.PARAM_NAMES)
    assert stats == set(constants.STAT_NAMES)
