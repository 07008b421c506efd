"""Tests of resblock/blas.py: NumPy's OpenBLAS thread count, set for a block."""

from __future__ import annotations

import numpy as np
import pytest

from resblock import blas


@pytest.fixture
def openblas():
    n = blas.num_threads()
    if n is None:
        pytest.skip("this NumPy is not linked to OpenBLAS: threads() does nothing")
    return n


def test_threads_limits_and_restores_the_count(openblas):
    with blas.threads(1):
        assert blas.num_threads() == 1
        a = np.arange(64.0).reshape(8, 8)
        assert np.array_equal(a @ np.eye(8), a)  # BLAS still works on one thread
    assert blas.num_threads() == openblas


def test_threads_restores_the_count_after_an_error(openblas):
    with pytest.raises(ValueError, match="inside"):
        with blas.threads(1):
            raise ValueError("inside")
    assert blas.num_threads() == openblas


def test_threads_never_raises_the_count(openblas):
    with blas.threads(openblas + 4):
        assert blas.num_threads() == openblas
    with blas.threads(1):
        with blas.threads(3):  # nested: the inner limit is above the outer one
            assert blas.num_threads() == 1
        assert blas.num_threads() == 1
    assert blas.num_threads() == openblas


def _recorder(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(blas.num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_the_kits_float64_evaluations_run_on_one_thread_and_restore_it(monkeypatch,
                                                                        openblas):
    """The oracle, the budgets, the spreads and the backward and its model run their
    products on one thread (each entry point spied on through a function it calls)."""
    from resblock.spec import backward, error_model, error_model_backward, error_spread, oracle
    from resblock.spec.cases import Case
    from resblock.spec.derivation import derive_variables, derive_x, derive_y_bar

    case = Case("functional", "normal", 2, 4, 4, 3, 0)
    x, (params, stats), y_bar = derive_x(case), derive_variables(case), derive_y_bar(case)
    seen: dict = {}
    for module, name in ((oracle, "conv3x3"), (error_model, "abs_conv"),
                         (error_spread, "tap_moments"), (backward, "conv3x3_kernel_grad"),
                         (error_model_backward, "conv3x3_kernel_grad")):
        _recorder(monkeypatch, module, name, seen.setdefault(module.__name__, []))
    ref = oracle.forward(x, params, stats)
    error_model.budgets(x, params, stats, ref.stages)
    error_spread.forward_spread(x, params, stats, ref.stages)
    bw = backward.backward(x, params, stats, y_bar)
    error_model_backward.model(x, params, stats, y_bar, bw)
    assert blas.num_threads() == openblas
    for module, counts in seen.items():
        assert counts and set(counts) == {1}, (module, counts)


def test_one_thread_gives_the_same_bits_where_positions_are_the_rows():
    """Why decorating the oracle did not change the committed set: OpenBLAS splits a
    product's rows and columns over its threads, so products whose rows are positions
    (the convolutions, the input gradient) give the same bits on one thread (a size at
    which it uses them all). Products with a long sum (the kernel gradient) may be split
    along it; under single_threaded they always run on one thread, whatever the core
    count."""
    from resblock.spec.backward import conv3x3_input_grad
    from resblock.spec.error_model import abs_conv
    from resblock.spec.oracle import conv3x3

    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 28, 28, 32))
    g = rng.standard_normal((8, 28, 28, 32))
    k = rng.standard_normal((3, 3, 32, 32))
    b = rng.standard_normal(32)
    many = [conv3x3(a, k, b), conv3x3_input_grad(g, k), abs_conv(np.abs(a), k * k)]
    with blas.threads(1):
        one = [conv3x3(a, k, b), conv3x3_input_grad(g, k), abs_conv(np.abs(a), k * k)]
    for m, o in zip(many, one, strict=True):
        assert np.array_equal(m, o)
