"""generator/batched.py: the batched derivation is bit-identical to the spec's exact one."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from resblock.generator import batched
from resblock.generator.grid import preset_cases
from resblock.spec.cases import Case
from resblock.spec.derivation import derive_variables, derive_x
from resblock.spec.reference import BasicBlock


def _assert_same(case, got):
    x, params, stats = got
    np.testing.assert_array_equal(x, derive_x(case), err_msg=case.id)
    want_p, want_s = derive_variables(case)
    assert jax.tree_util.tree_structure((params, stats)) == \
        jax.tree_util.tree_structure((want_p, want_s))
    for a, b in zip(jax.tree_util.tree_leaves((params, stats)),
                    jax.tree_util.tree_leaves((want_p, want_s)), strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=case.id)


def test_default_preset_bit_identical():
    """Against the exact path, one default case per family, input kind and parameter
    source: the exact path compiles a program per shape, 1-4 s a case. Every committed
    case is derived by the batched path and compared with the file by ``resblock
    verify`` (tests/test_cli.py); the fast init against Flax's at seven feature counts
    is the next test."""
    cases, seen = [], set()
    for c in preset_cases("default"):
        key = (c.family, c.inputs, c.params_source)
        if key not in seen:
            seen.add(key)
            cases.append(c)
    assert len({(c.family, c.inputs) for c in cases}) == 10
    for case, got in zip(cases, batched.derive_cases(cases), strict=True):
        _assert_same(case, got)


@pytest.mark.parametrize("features", [1, 2, 3, 5, 16, 33, 64])
def test_fast_init_equals_flax_init_on_real_input(features):
    """Against Flax's init on a (1, H, W, C) input, as the problem calls it."""
    assert batched.fast_init_supported()
    seeds = [0, 1, 7, 12345, 2**31 - 1]
    cases = [Case("seeded", "normal", 1, 3, 2, features, s) for s in seeds]
    for case, (_, params, stats) in zip(cases, batched.derive_cases(cases), strict=True):
        v = BasicBlock(features).init(jax.random.PRNGKey(case.seed),
                                      np.zeros((1, 3, 2, features), np.float32))
        for got, want in ((params, v["params"]), (stats, v["batch_stats"])):
            for layer in want:
                for leaf in want[layer]:
                    np.testing.assert_array_equal(got[layer][leaf], np.asarray(
                        want[layer][leaf]), err_msg=f"{case.id} {layer}/{leaf}")


def test_mixed_families_and_chunking():
    """More requests than one CHUNK, all input kinds: order and slicing stay right."""
    cases = [Case(fam, inp, n, h, w, f, s)
             for s in range(8)
             for fam, inp, n, h, w, f in (("functional", "offset", 2, 3, 4, 3),
                                          ("stress", "lowamp", 1, 1, 1, 5),
                                          ("seeded", "normal", 1, 2, 5, 2),
                                          ("stress", "large", 4, 2, 2, 8))]
    assert len(cases) * 5 > batched.CHUNK
    for case, got in zip(cases, batched.derive_cases(cases), strict=True):
        _assert_same(case, got)


def test_falls_back_to_flax_init_for_untested_flax(monkeypatch):
    monkeypatch.setattr(batched, "FAST_INIT_FLAX", ("0.0.",))
    assert not batched.fast_init_supported()
    case = Case("seeded", "normal", 1, 2, 2, 3, 4)
    _assert_same(case, batched.derive_cases([case])[0])


def test_flax_suffix_hash_matches_flax():
    from flax.core.scope import _fold_in_static

    key = jax.random.PRNGKey(3)
    for suffix in (("Conv_0", 1), ("Conv_1", 1)):
        want = np.asarray(_fold_in_static(key, suffix))
        got = np.asarray(jax.random.fold_in(key, np.uint32(batched._flax_suffix_hash(suffix))))
        np.testing.assert_array_equal(got, want)


def test_large_draws_run_per_size_class_bit_identically(monkeypatch):
    # One large shape among small ones: instead of CHUNK rows padded to the largest draw,
    # each size class runs alone with as few rows as fit; the bits do not change (the
    # padded path is compared with the exact one by the tests above).
    cases = [Case("functional", "normal", 1, 2, 2, 2, 0),
             Case("stress", "normal", 2, 9, 7, 3, 1),
             Case("seeded", "normal", 1, 2, 2, 2, 0)]
    padded = batched.derive_cases(cases)
    monkeypatch.setattr(batched, "PAD_BUDGET_BYTES", 4 * 1024)  # forces the large path
    calls = []
    real = batched._execute_batch
    monkeypatch.setattr(batched, "_execute_batch",
                        lambda reqs, sizes, rows: calls.append((rows, max(map(len, reqs))))
                        or real(reqs, sizes, rows))
    classed = batched.derive_cases(cases)
    assert len(calls) > 1 and min(r for r, _ in calls) < batched.CHUNK
    # never more rows than draws: a real-size x alone is drawn once, not padded to 8 rows
    assert all(rows <= draws for rows, draws in calls) and (1, 1) in calls
    for (x, params, stats), (x2, params2, stats2) in zip(padded, classed, strict=True):
        assert np.array_equal(x, x2)
        for tree, tree2 in ((params, params2), (stats, stats2)):
            for layer in tree:
                for leaf in tree[layer]:
                    assert np.array_equal(tree[layer][leaf], tree2[layer][leaf]), (layer, leaf)


def test_batched_y_bars_equal_the_exact_draws():
    from resblock.generator.batched import derive_y_bars
    from resblock.spec.cases import Case
    from resblock.spec.derivation import derive_y_bar

    cases = [Case("functional", "normal", 2, 3, 5, 4, 0), Case("seeded", "large", 1, 1, 1, 3, 7),
             Case("stress", "offset", 4, 6, 6, 8, 1)]
    for c, got in zip(cases, derive_y_bars(cases), strict=True):
        want = derive_y_bar(c)
        assert got.dtype == want.dtype and got.shape == c.x_shape
        assert np.array_equal(got, want)


def test_inputs_and_y_bars_drawn_together_equal_the_exact_draws():
    """derive_cases_and_y_bars: the cotangents ride in the inputs' draw programs and
    change neither (every family, padded rows of several sizes)."""
    from resblock.spec.derivation import derive_y_bar

    cases = [Case("functional", "normal", 2, 3, 5, 4, 0), Case("seeded", "large", 1, 1, 1, 3, 7),
             Case("stress", "offset", 4, 6, 6, 8, 1), Case("seeded", "normal", 1, 4, 4, 4, 2)]
    inputs, y_bars = batched.derive_cases_and_y_bars(cases)
    assert len(inputs) == len(y_bars) == len(cases)
    for c, got, y_bar in zip(cases, inputs, y_bars, strict=True):
        _assert_same(c, got)
        want = derive_y_bar(c)
        assert y_bar.dtype == np.float32 and y_bar.shape == c.x_shape
        assert np.array_equal(y_bar, want), c.id
        assert not np.array_equal(y_bar, got[0])  # its own role, not x's draw


def test_batched_running_stats_equal_the_exact_draws():
    from resblock.generator.batched import derive_running_stats_all
    from resblock.spec.cases import Case
    from resblock.spec.derivation import derive_running_stats

    cases = [Case("functional", "normal", 2, 3, 5, 4, 0), Case("seeded", "large", 1, 1, 1, 3, 7),
             Case("stress", "lowamp", 4, 6, 6, 8, 1), Case("stress", "offset", 1, 2, 2, 1, 2)]
    for c, got in zip(cases, derive_running_stats_all(cases), strict=True):
        want = derive_running_stats(c)
        for layer in want:
            for leaf in want[layer]:
                assert got[layer][leaf].dtype == np.float32
                assert np.array_equal(got[layer][leaf], want[layer][leaf]), (c.id, layer, leaf)
