"""Generate a golden file from a list of cases (library entry point behind the CLI).

The work of one process lives in :mod:`resblock.generator.compute` (its compile worker in
:mod:`resblock.generator.compile_worker`), forked and spawned workers in
:mod:`resblock.generator.parallel`; ``jax.distributed`` in
:mod:`resblock.generator.distributed`.

Work is split over ``jobs`` worker processes (both cores of a small machine): each
computes whole shape groups into a shard golden file, and the shards are merged
(:mod:`resblock.golden.merge`). Compilation dominates cold runs, so each worker derives
all its inputs in a few batched programs (:mod:`resblock.generator.batched`) and
compiles one forward per shape. With ``jobs == 1`` everything runs in this process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from resblock.generator import compute, parallel, provenance
from resblock.generator.compile_worker import can_fork
from resblock.generator.grid import definition, group_cases

PARALLEL_MIN_WORK_S = 5.0  # estimated execution seconds per worker beyond the second
SPLIT_OVERHEAD_S = 1.0  # writing each worker's shard and copying it into the output
GRAD_COMPILE_FACTOR = 3.0  # forward+VJP program over forward-only: 15.7 vs 5.2 CPU s to
#                            lower and compile the default preset's 34 shape groups


def default_jobs(cases, groups, grad: bool = False) -> int:
    """One process (plus its compile worker) unless execution, not compilation, dominates.

    In one process the compile worker (:class:`resblock.generator.compile_worker.
    CompileWorker`) compiles on the second core while this process executes, and each
    takes the other's work when it runs out, so the wall time is about ``max(E, (E +
    C) / 2)`` for execution ``E`` and compilation ``C``; split over processes, each
    compiles and executes its own groups, ``(E + C) / 2`` plus the shards' writing and
    copying. Splitting pays only where execution exceeds compilation by more than that
    (:data:`SPLIT_OVERHEAD_S`): measured slower on the benchmark, default and large
    presets (2.7 vs 2.4 s, 4.6 vs 4.5 s, 4.2 vs 3.8 s), faster on the bench preset's
    ``--grad`` (8.0 vs 9.5 s), whose backward is ten times its forward's execution.
    ``grad``: the backward's execution and compilation counted too.
    """
    from resblock.generator.shard import COMPILE_S, backward_cost, work_cost

    work = sum(work_cost(g) + (backward_cost(g) if grad else 0.0) for g in groups)
    compile_s = len(groups) * COMPILE_S * (GRAD_COMPILE_FACTOR if grad else 1.0)
    if work < compile_s + SPLIT_OVERHEAD_S:
        return 1
    jobs = min(os.cpu_count() or 1, len(groups), 8, max(2, int(work // PARALLEL_MIN_WORK_S)))
    return max(1, jobs)


def generate(cases, path, *, preset: str | None = None, force: bool = False,
             device: str = "cpu", jobs: int | None = None, shard: str | None = None,
             precision: str = "highest", cache_dir: str | None = None,
             progress: Callable[[int], None] | None = None, grad: bool = False,
             stages: bool = False, inference: bool = False) -> dict:
    """Compute every case (or shard ``"K/N"`` of them), write ``path`` atomically, and
    return the metadata written. The metadata records the whole grid, so shards can be
    merged and checked for gaps. ``grad``: also the backward (format 2.1 gradient
    datasets: ``y_bar``, the reference's ``jax.vjp``, the oracle backward, budgets),
    forward and VJP compiled as one program per shape group. ``stages``: also store the
    stage data (format 5: oracles and budgets of the six stages, for diagnosis; a reader
    recomputes it from the inputs when it is absent). ``inference``: also the inference
    block (format 6, spec section 12: running statistics from the case key, the Flax
    reference with ``use_running_average=True``, its float64 oracle, budgets, spreads)."""
    from resblock.errors import GoldenFormatError
    from resblock.generator.shard import parse_shard, shard_cases

    path = Path(path)
    provenance.created_timestamp()  # a bad SOURCE_DATE_EPOCH fails before any work
    if path.exists() and not force:
        raise GoldenFormatError(f"{path} already exists; refusing to overwrite a golden file. "
                                "Pass --force to replace it, or choose another output path.")
    grid = {"preset": preset, "definition": definition(preset, cases), "shard": shard}
    if shard is not None:
        k, n = parse_shard(shard)
        grid["shard"] = f"{k}/{n}"
        cases = shard_cases(cases, k, n)
    groups = group_cases(cases)
    jobs = default_jobs(cases, groups, grad) if jobs is None else max(1, min(jobs, len(groups)))
    if jobs == 1:
        return compute.compute_into(groups, path, device=device, grid=grid, force=force,
                                    progress=progress, precision=precision,
                                    cache_dir=cache_dir, grad=grad, stages=stages,
                                    inference=inference)
    if can_fork():
        return parallel.generate_forked(groups, path, jobs=jobs, device=device, grid=grid,
                                force=force, progress=progress, precision=precision,
                                cache_dir=cache_dir, grad=grad, stages=stages,
                                    inference=inference)
    return parallel.generate_spawned(groups, path, jobs=jobs, device=device, grid=grid,
                                     force=force,
                              progress=progress, precision=precision, cache_dir=cache_dir,
                              grad=grad, stages=stages,
                                    inference=inference)
