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
