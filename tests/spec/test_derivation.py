"""Tests for spec/derivation.py: per-case keys, independence, and the INPUTS table."""

from __future__ import annotations

import hashlib

import jax
import numpy as np
import pytest

from resblock.generator.engine import ReferenceRunner, compute_group
from resblock.generator.grid import group_cases
from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES
from resblock.spec.derivation import (
    derive_random_variables,
    derive_running_stats,
    derive_variables,
    derive_x,
    key_seed,
    prng_config,
)
from resblock.spec.reference import init_variables

F = "functional"


def test_key_seed_is_first_four_bytes_of_sha256_little_endian():
    c = Case("seeded", "normal", 1, 4, 4, 4, 0)
    digest = hashlib.sha256(b"resblock/1|seeded|normal|n=1|h=4|w=4|f=4|seed=0|x").digest()
    assert key_seed(c, "x") == digest[0] | digest[1] << 8 | digest[2] << 16 | digest[3] << 24
    assert 0 <= key_seed(c, "x") < 2**32


def test_x_is_normal_draw_from_the_case_key():
    c = Case("functional", "normal", 2, 3, 5, 2, 4)
    want = jax.random.normal(jax.random.PRNGKey(key_seed(c, "x")), (2, 3, 5, 2), np.float32)
    np.testing.assert_array_equal(derive_x(c), np.asarray(want))


def test_derivation_is_repeatable():
    c = Case("stress", "offset", 2, 3, 3, 2, 0)
    np.testing.assert_array_equal(derive_x(c), derive_x(c))
    a, b = derive_random_variables(c), derive_random_variables(c)
    for t in (0, 1):
        for layer in a[t]:
            for leaf in a[t][layer]:
                np.testing.assert_array_equal(a[t][layer][leaf], b[t][layer][leaf])


def _group_rows(cases):
    runner = ReferenceRunner(jax.devices("cpu")[0])
    out = {}
    for group in group_cases(cases):
        arrays, _ = compute_group(group, runner)
        for row, c in enumerate(group):
            out[c.id] = {k: v[row] for k, v in arrays.items()}
    return out


def test_adding_cases_never_changes_another_cases_data():
    """Derive one case alone, then within a grid that adds cases before and after it."""
    target = Case(F, "normal", 2, 3, 3, 2, 1)
    alone = _group_rows([target])[target.id]
    grid = [Case(F, "normal", 2, 3, 3, 2, 0), target, Case(F, "normal", 2, 3, 3, 2, 5),
            Case("stress", "offset", 2, 3, 3, 2, 1), Case(F, "normal", 1, 3, 5, 2, 1)]
    within = _group_rows(grid)[target.id]
    assert alone.keys() == within.keys()
    for name in alone:
        np.testing.assert_array_equal(alone[name], within[name], err_msg=name)
    # and the standalone derivation functions agree with what the engine stored
    np.testing.assert_array_equal(alone["x"], derive_x(target))
    params, stats = derive_variables(target)
    for name in PARAM_NAMES:
        layer, leaf = name.split("/")
        np.testing.assert_array_equal(alone[f"params/{name}"], params[layer][leaf])
    for name in STAT_NAMES:
        layer, leaf = name.split("/")
        np.testing.assert_array_equal(alone[f"batch_stats_in/{name}"], stats[layer][leaf])


def test_different_cases_get_different_x():
    base = dict(family=F, inputs="normal", n=2, h=3, w=3, features=2, seed=0)
    variants = [Case(**base)] + [Case(**{**base, k: v}) for k, v in
                                 [("seed", 1), ("seed", 2), ("family", "stress")]]
    xs = [derive_x(c) for c in variants]
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            assert not np.array_equal(xs[i], xs[j]), (variants[i].id, variants[j].id)
    # transposed shape: a different case, not a reshaped copy
    a = derive_x(Case(F, "normal", 1, 3, 5, 2, 0))
    b = derive_x(Case(F, "normal", 1, 5, 3, 2, 0))
    assert not np.array_equal(a.reshape(-1), b.reshape(-1))


def test_parameters_of_different_cases_and_roles_differ():
    p0, _ = derive_random_variables(Case(F, "normal", 2, 3, 3, 2, 0))
    p1, _ = derive_random_variables(Case(F, "normal", 2, 3, 3, 2, 1))
    assert not np.array_equal(p0["Conv_0"]["kernel"], p1["Conv_0"]["kernel"])
    assert not np.array_equal(p0["Conv_0"]["kernel"], p0["Conv_1"]["kernel"])
    assert not np.array_equal(p0["Conv_0"]["bias"], p0["BatchNorm_0"]["bias"])


def _z(case, role="x", shape=None):
    key = jax.random.PRNGKey(key_seed(case, role))
    return np.asarray(jax.random.normal(key, shape or case.x_shape, np.float32))


def test_input_distributions_follow_the_table():
    """lowamp = 1e-3 z, large = 1e3 z, offset = z + o_c with o_c ~ U(-64, 64)."""
    args = (2, 3, 3, 2, 0)
    normal, low, large, offset = (Case("stress", k, *args)
                                  for k in ("normal", "lowamp", "large", "offset"))
    np.testing.assert_array_equal(derive_x(normal), _z(normal))
    np.testing.assert_array_equal(derive_x(low), np.float32(1e-3) * _z(low))
    np.testing.assert_array_equal(derive_x(large), np.float32(1e3) * _z(large))
    o = jax.random.uniform(jax.random.PRNGKey(key_seed(offset, "x/offset")), (2,),
                           np.float32, -64.0, 64.0)
    np.testing.assert_array_equal(derive_x(offset), _z(offset) + np.asarray(o))
    for c in (normal, low, large, offset):
        x = derive_x(c)
        assert x.dtype == np.float32 and x.shape == (2, 3, 3, 2)
    # inputs is part of the derivation string: each kind has its own underlying z
    assert not np.array_equal(_z(low), _z(normal))
    assert np.max(np.abs(np.asarray(o))) <= 64.0
    assert np.max(np.abs(np.asarray(o))) > 1.0


def test_random_variables_ranges():
    c = Case(F, "normal", 4, 1, 1, 8, 0)
    params, stats = derive_random_variables(c)
    for i in (0, 1):
        k = params[f"Conv_{i}"]["kernel"]
        assert k.shape == (3, 3, 8, 8) and k.dtype == np.float32
        assert k.std() == pytest.approx(1 / np.sqrt(72), rel=0.25)
        assert np.all(params[f"Conv_{i}"]["bias"] != 0)
        s = params[f"BatchNorm_{i}"]["scale"]
        assert np.all((s >= 0.25) & (s <= 2.0))
        v = stats[f"BatchNorm_{i}"]["var"]
        assert np.all((v >= 0.5) & (v <= 2.0))
        assert np.all(stats[f"BatchNorm_{i}"]["mean"] != 0)


def test_seeded_family_uses_flax_init_from_prngkey_seed():
    c = Case("seeded", "normal", 1, 3, 5, 2, 3)
    params, stats = derive_variables(c)
    want_p, want_s = init_variables(3, 2)
    for layer in want_p:
        for leaf in want_p[layer]:
            np.testing.assert_array_equal(params[layer][leaf], want_p[layer][leaf])
    for layer in want_s:
        for leaf in want_s[layer]:
            np.testing.assert_array_equal(stats[layer][leaf], want_s[layer][leaf])


def test_prng_config_is_recorded():
    cfg = prng_config()
    assert cfg == {"default_prng_impl": "threefry2x32",
                   "threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}


def test_grid_derivation_equals_each_case_alone():
    """The generator derives a whole grid in batched calls (resblock.generator.batched);
    every case must still get exactly the arrays it gets alone (spec/derivation.py)."""
    from resblock.generator.batched import derive_cases

    cases = [Case(fam, inp, n, h, w, f, s)
             for fam, inp, n, h, w, f, s in [
                 ("seeded", "normal", 1, 3, 5, 2, 0), ("seeded", "normal", 1, 4, 4, 4, 3),
                 ("seeded", "lowamp", 1, 1, 1, 1, 2), ("seeded", "normal", 1, 3, 5, 8, 1),
                 ("functional", "normal", 2, 3, 5, 2, 0), ("functional", "normal", 4, 1, 1, 8, 1),
                 ("stress", "offset", 2, 3, 3, 2, 0), ("stress", "large", 2, 4, 4, 4, 0),
                 ("stress", "lowamp", 2, 3, 3, 3, 1)]]
    together = derive_cases(cases)
    for case, (x, params, stats) in zip(cases, together, strict=True):
        np.testing.assert_array_equal(x, derive_x(case), err_msg=case.id)
        want_p, want_s = derive_variables(case)
        for name in PARAM_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_array_equal(params[layer][leaf], want_p[layer][leaf],
                                          err_msg=f"{case.id} {name}")
        for name in STAT_NAMES:
            layer, leaf = name.split("/")
            np.testing.assert_array_equal(stats[layer][leaf], want_s[layer][leaf],
                                          err_msg=f"{case.id} {name}")
    # and one case alone through the same batched path
    (alone,) = derive_cases([cases[6]])
    np.testing.assert_array_equal(alone[0], together[6][0])


def test_running_statistics_follow_spec_12_2():
    """Each from its own role (``inference/<stat>``), scaled by the input amplitude, one
    variance at 1e-6 in BatchNorm_1; repeatable and unlike the incoming statistics."""
    from resblock.spec.derivation import ExactDraws

    for inputs, a in (("normal", 1.0), ("large", 1e3), ("lowamp", 1e-3)):
        c = Case("stress", inputs, 2, 3, 3, 6, 1)
        rs = derive_running_stats(c)
        assert sorted(rs) == ["BatchNorm_0", "BatchNorm_1"]
        z = ExactDraws().normal(c, "inference/BatchNorm_0/mean", (6,))
        assert np.array_equal(rs["BatchNorm_0"]["mean"], np.float32(4.0 * a) * z)
        u = ExactDraws().uniform(c, "inference/BatchNorm_0/var", (6,), 0.25, 4.0)
        assert np.array_equal(rs["BatchNorm_0"]["var"], np.float32(a * a) * u)
        assert rs["BatchNorm_1"]["var"][0] == np.float32(1e-6)
        assert rs["BatchNorm_1"]["mean"][0] == 0.0 and np.all(rs["BatchNorm_1"]["mean"][1:])
        assert np.all(rs["BatchNorm_1"]["var"][1:] >= np.float32(0.25 * a * a))
        assert all(v.dtype == np.float32 and v.shape == (6,)
                   for d in rs.values() for v in d.values())
        _, stats = derive_random_variables(c)
        assert not np.array_equal(rs["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["mean"])
        again = derive_running_stats(c)
        assert all(np.array_equal(again[k][kk], rs[k][kk]) for k in rs for kk in rs[k])

