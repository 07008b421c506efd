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

PARALLEL_MIN_WORK_S = 5.0  # estimated execution seconds per worker before splitting groups


def default_jobs(cases, groups) -> int:
    """One process (plus its compile worker) unless execution, not compilation, dominates.

    Compilation is what dominates ordinary grids, and the compile worker
    (:class:`resblock.generator.compile_worker.CompileWorker`) already puts it on the
    second core; splitting groups over processes was measured slower on
    the benchmark, default and large presets (2.7 vs 2.4 s, 4.6 vs 4.5 s, 4.2 vs 3.8 s).
    Grids with many seconds of float32/float64 work per core are split.
    """
    from resblock.generator.shard import work_cost

    work = sum(work_cost(g) for g in groups)
    jobs = min(os.cpu_count() or 1, len(groups), 8, int(work // PARALLEL_MIN_WORK_S))
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
    jobs = default_jobs(cases, groups) if jobs is None else max(1, min(jobs, len(groups)))
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
