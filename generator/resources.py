"""What a grid will cost, known before anything runs: axis sizes, case counts and the
memory of each shape group (issue 12: a typo such as ``--seeds 0-999999999`` or
``--shapes 10000x10000`` must end in one line, not in swap, an XLA out-of-memory
traceback or a SIGABRT).

Pure arithmetic on the grid; nothing here imports JAX.
"""

from __future__ import annotations

import os

import numpy as np

from resblock.errors import GridError

MAX_AXIS_VALUES = 100_000  # values one axis option (--seeds, --features, --batch) expands to
MAX_CASES = 100_000  # cases of one grid
# A group is held while it is computed: its stored arrays, plus the float32 forward's and
# the float64 oracle's intermediates and the copies made for hashing and writing (the
# stage data is computed whether or not it is stored: it counts).
WORKING_FACTOR = 5  # measured: 4.3 for --family functional --batch 100000 (4x4x4)


def axis_count(ranges) -> int:
    """How many values ``[(lo, hi), ...]`` (inclusive ranges) expand to, without expanding."""
    return sum(hi - lo + 1 for lo, hi in ranges)


def check_grid_size(axes: dict) -> None:
    """Refuse a product of axes larger than :data:`MAX_CASES` before building it."""
    total = 1
    for values in axes.values():
        total *= max(1, len(values))
    if total > MAX_CASES:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items() if len(v) > 1)
        raise GridError(f"the grid has up to {total} cases ({sizes}), more than {MAX_CASES}; "
                        "split it over runs (--shard K/N) or narrow the axes")


def case_bytes(n: int, h: int, w: int, f: int, grad: bool = False,
               stages: bool = False, inference: bool = False) -> int:
    """Bytes a golden file declares for one case of shape (n, h, w, f), before
    compression (with ``grad``, the backward arrays too; with ``stages``, the stage
    data; with ``inference``, the inference block)."""
    from resblock.golden.store import (
        INFERENCE_MARKER,
        STAGES_MARKER,
        STORE_MARKER,
        expected_dtype,
        expected_shape,
        group_arrays,
    )

    names = group_arrays(("sigma/y", STORE_MARKER) + (("grad/y_bar",) if grad else ())
                         + ((STAGES_MARKER,) if stages else ())
                         + ((INFERENCE_MARKER,) if inference else ()))
    return sum(int(np.prod(expected_shape(name, n, h, w, f), dtype=np.int64))
               * expected_dtype(name).itemsize for name in names)


def group_memory(cases, grad: bool = False,
                 inference: bool = False) -> list[tuple[str, int, int]]:
    """``[(group, cases, estimated bytes while computed)]``, largest first."""
    groups: dict[str, list] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    out = [(g, len(cs), WORKING_FACTOR * len(cs) * case_bytes(cs[0].n, cs[0].h, cs[0].w,
                                                              cs[0].features, grad, True,
                                                              inference))
           for g, cs in groups.items()]
    return sorted(out, key=lambda t: -t[2])


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def default_limit() -> int | None:
    """80% of this machine's memory (None where it cannot be known)."""
    mem = physical_memory()
    return None if mem is None else int(0.8 * mem)


def check_memory(cases, limit_gb: float | None = None, grad: bool = False,
                 inference: bool = False) -> None:
    """Refuse a grid whose largest shape group would not fit in ``limit_gb`` gigabytes
    (default: :func:`default_limit`); ``grad``: the backward arrays are stored too;
    ``inference``: the inference block."""
    limit = default_limit() if limit_gb is None else int(limit_gb * 1e9)
    if limit is None or not cases:
        return
    group, k, need = group_memory(cases, grad, inference)[0]
    if need > limit:
        which = ("--memory-limit" if limit_gb is not None
                 else "80% of this machine's memory")
        raise GridError(
            f"shape group {group} ({k} case{'s' if k != 1 else ''}) needs about "
            f"{need / 1e9:.1f} GB while it is computed, more than the limit of "
            f"{limit / 1e9:.1f} GB ({which}); use smaller shapes, batches or fewer seeds "
            "per shape, or raise --memory-limit (in GB) if the machine can hold it")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION = 4 << 20


def return_large_allocations() -> bool:
    """Have glibc's malloc give every allocation of LARGE_ALLOCATION bytes and more its own
    mapping, returned to the system when freed (a fixed ``M_MMAP_THRESHOLD``). For grids
    with real-size cases only (:func:`compute.compute_groups`): small grids' time is
    compilation, whose allocations are better served from the heap.

    By default glibc raises that threshold to the size of each large block freed (up to
    32 MB), after which arrays of a real-size case's size come from the heap, which
    fragments and is not given back: RSS then grows from shape group to shape group
    (measured, ``--preset resnet18 --jobs 1``: 2.06 GB peak, 1.58 GB with the fixed
    threshold; no effect on any value). A no-op (False) without glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION))
    except (OSError, AttributeError):
        return False
