"""How many threads NumPy's BLAS uses, set for a block of code (issue 19).

The float64 oracle, the error model and the spread model make thousands of mid-size
matrix products (a (C, P) by (P, F) product per tap and block, a (P, 9) by (9, F) one
per channel). OpenBLAS splits each over its threads and waits for all of them: on a
machine whose cores are busy with other work (a 2-core machine running a test suite),
each product then waits for a time slice. Measured at 32x56x56x64 with load average 7 on
2 cores: one (64 x 100352) by (100352 x 64) float32 product 3.6 s with OpenBLAS's 2
threads, 0.018 s with one; the spread model 33-66 s against 7-10 s. One thread costs at
most the second core on a quiet machine, where the generator's other process (the
compile worker, ``--jobs``) uses it anyway.

Only OpenBLAS (what NumPy's wheels ship) is handled, through its own
``openblas_set_num_threads``; with another BLAS, or none found, :func:`threads` does
nothing. The setting is per process and restored on exit; child processes are not
affected (no environment variable is set).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")
_API: list = []  # [(get, set)] once looked up; [None] when no OpenBLAS is loaded


def _openblas():
    """``(get, set)`` of the OpenBLAS NumPy loaded, or None."""
    if _API:
        return _API[0]
    import numpy as np  # noqa: F401 - loads NumPy's BLAS

    api = None
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh
                            if "openblas" in line.split()[-1].lower()
                            and ".so" in line.split()[-1]})
    except OSError:  # not Linux: leave the BLAS as it is
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is not None and put is not None:
            get.restype = ctypes.c_int
            put.argtypes = [ctypes.c_int]
            api = (get, put)
            break
    _API.append(api)
    return api


def num_threads() -> int | None:
    """The threads NumPy's OpenBLAS uses now (None: no OpenBLAS found)."""
    api = _openblas()
    return None if api is None else int(api[0]())


@contextlib.contextmanager
def threads(n: int):
    """Run the block with NumPy's OpenBLAS limited to ``n`` threads (at most its current
    count), restoring the count afterwards."""
    api = _openblas()
    if api is None:
        yield
        return
    before = int(api[0]())
    if n >= before:
        yield
        return
    api[1](n)
    try:
        yield
    finally:
        api[1](before)


def single_threaded(fn):
    """Decorate ``fn`` to run with NumPy's OpenBLAS on one thread (:func:`threads`).

    For the kit's float64 and model evaluations (the oracle, the budgets, the spreads,
    the backward). Products whose rows are positions (the convolutions) give the same
    bits on one thread as on several (OpenBLAS splits rows and columns over its
    threads; measured at 2x8x8x16, 8x28x28x128 and 32x56x56x64), so the committed set
    regenerates unchanged; products with a long sum (kernel gradients, by blocks) may
    be split along it by several threads, so one thread also makes their bits
    independent of the machine's core count."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threads(1):
            return fn(*args, **kwargs)

    return wrapper
