"""Generate a golden file from a list of cases (library entry point behind the CLI).

Work is split over ``jobs`` worker processes (both cores of a small machine): each
computes whole shape groups into a shard golden file, and the shards are merged
(:mod:`resblock.golden.merge`). Compilation dominates cold runs, so each worker derives
all its inputs in a few batched programs (:mod:`resblock.generator.batched`) and
compiles one forward per shape. With ``jobs == 1`` everything runs in this process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from resblock import __version__
from resblock.generator import provenance
from resblock.generator.grid import definition, group_cases
from resblock.generator.shard import plan
from resblock.spec.constants import FORMAT_VERSION, SPEC_VERSION

DERIVE_CHUNK = 512  # cases derived per batch: bounds memory on huge grids


def resolve_device(kind: str = "cpu"):
    """The JAX device for ``cpu``, ``gpu`` or ``auto`` (GPU when one is present)."""
    import jax

    from resblock.errors import HarnessError

    if kind == "cpu":
        return jax.local_devices(backend="cpu")[0]
    try:
        return jax.local_devices(backend="gpu")[0]
    except RuntimeError:
        if kind == "auto":
            return jax.local_devices(backend="cpu")[0]
        raise HarnessError("--device gpu: JAX sees no GPU here (jax.devices('gpu') failed); "
                           "install jax[cuda12] or use --device cpu") from None


WORKER_STARTUP_S = 1.5  # spawning a worker, importing JAX and compiling its draws
PARALLEL_MIN_COST_S = 8.0


def default_jobs(cases, groups) -> int:
    """One process unless the estimated work dwarfs a worker's start-up.

    Measured here: on the 256-case benchmark grid (~1.5 s of estimated work) two workers
    were 1.6x slower than one process, because every worker pays the imports and its
    own compilations again.
    """
    from resblock.generator.shard import unit_cost

    cost = sum(unit_cost(g) for g in groups)
    if cost < PARALLEL_MIN_COST_S:
        return 1
    jobs = min(os.cpu_count() or 1, len(groups), 8, int(cost // WORKER_STARTUP_S) or 1)
    return max(1, jobs)


def configure_cache(cache_dir: str | None) -> str | None:
    """Use JAX's persistent compilation cache in ``cache_dir`` for every compilation.

    JAX caches only compilations over 1 s by default; the kit's programs take 0.1-0.6 s
    each, so the thresholds are lowered to cache them all. Cached executables produce
    the same bits as fresh ones (tests/generator/test_run.py). Default: the
    ``JAX_COMPILATION_CACHE_DIR`` environment variable, if set; else no cache.
    """
    import jax

    cache_dir = cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or None
    if cache_dir:
        from jax.experimental.compilation_cache import compilation_cache

        if jax.config.jax_compilation_cache_dir != str(cache_dir):
            compilation_cache.reset_cache()  # JAX initialises its cache once per process
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return cache_dir


def _compute_into(groups, path, *, device: str, grid: dict, force: bool, progress=None,
                  precision: str = "highest", cache_dir: str | None = None):
    """Compute ``groups`` in this process and write them to ``path``.

    On a host with several GPUs, shape groups go round-robin over the local devices.
    """
    import jax

    from resblock.generator.batched import derive_cases
    from resblock.generator.engine import ReferenceRunner, compute_group
    from resblock.golden.store import GoldenWriter

    created = provenance.created_timestamp()  # fail on a bad SOURCE_DATE_EPOCH before work
    cache_dir = configure_cache(cache_dir)
    dev = resolve_device(device)
    devices = [dev] if dev.platform == "cpu" else jax.local_devices(backend=dev.platform)
    runners = [ReferenceRunner(d, precision=precision) for d in devices]
    with GoldenWriter(path, force=force) as writer:
        pending: list = []
        for i, group in enumerate(groups):
            if not pending:  # derive the next chunk of groups in one batch
                chunk, n = [], 0
                for g in groups[i:]:
                    if chunk and n + len(g) > DERIVE_CHUNK:
                        break
                    chunk.append(g)
                    n += len(g)
                derived = derive_cases([c for g in chunk for c in g])
                pending = []
                for g in chunk:
                    pending.append(derived[: len(g)])
                    derived = derived[len(g):]
            inputs = pending.pop(0)
            arrays, extras = compute_group(group, runners[i % len(runners)], inputs)
            writer.write_group(group, arrays, extras)
            if progress is not None:
                progress(len(group))
        return writer.finish({
            "format_version": FORMAT_VERSION,
            "spec_version": SPEC_VERSION,
            "kit_version": __version__,
            "created": created,
            "environment": provenance.environment(dev),
            "computation": provenance.computation(precision, cache_dir is not None),
            "grid": grid,
        })


def _worker(args):  # runs in a worker process
    case_ids, path, device, grid, queue, precision, cache_dir = args
    from resblock.generator.grid import group_cases as _group
    from resblock.spec.cases import Case

    groups = _group([Case.from_id(i) for i in case_ids])
    _compute_into(groups, path, device=device, grid=grid, force=True, precision=precision,
                  cache_dir=cache_dir,
                  progress=(lambda n: queue.put(n)) if queue is not None else None)
    return path


def generate(cases, path, *, preset: str | None = None, force: bool = False,
             device: str = "cpu", jobs: int | None = None, shard: str | None = None,
             precision: str = "highest", cache_dir: str | None = None,
             progress: Callable[[int], None] | None = None) -> dict:
    """Compute every case (or shard ``"K/N"`` of them), write ``path`` atomically, and
    return the metadata written. The metadata records the whole grid, so shards can be
    merged and checked for gaps."""
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
        return _compute_into(groups, path, device=device, grid=grid, force=force,
                             progress=progress, precision=precision, cache_dir=cache_dir)
    return _generate_parallel(groups, path, jobs=jobs, device=device, grid=grid, force=force,
                              progress=progress, precision=precision, cache_dir=cache_dir)


def _generate_parallel(groups, path, *, jobs, device, grid, force, progress, precision,
                       cache_dir):
    import multiprocessing as mp
    import queue as _queue
    from concurrent.futures import ProcessPoolExecutor

    from resblock.golden.merge import merge_files

    ctx = mp.get_context("spawn")
    q = ctx.Manager().Queue() if progress is not None else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.shards-", dir=path.parent or "."))
    try:
        bins = [b for b in plan(groups, jobs) if b]
        work = [([c.id for g in b for c in g], str(tmp / f"shard{i}.h5"), device, grid, q,
                 precision, cache_dir) for i, b in enumerate(bins)]
        with ProcessPoolExecutor(len(work), mp_context=ctx) as pool:
            futures = [pool.submit(_worker, w) for w in work]
            while not all(f.done() for f in futures):
                if q is None:
                    futures[0].result()
                    continue
                try:
                    progress(q.get(timeout=0.1))
                except _queue.Empty:
                    pass
            shards = [f.result() for f in futures]
        if q is not None:
            while not q.empty():
                progress(q.get())
        expected = [c.id for g in groups for c in g]
        return merge_files(path, shards, grid=grid, expected_ids=expected, force=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_distributed(cases, path, *, preset=None, force=False, device="cpu",
                         precision="highest", cache_dir=None, coordinator=None,
                         num_processes=None,
                         process_id=None, wait_timeout: float = 3600.0, progress=None) -> dict:
    """One process of a ``jax.distributed`` job: compute shard ``process_index+1`` of
    ``process_count`` next to ``path``; process 0 waits for every shard (files are
    renamed into place atomically, so existence means complete) and merges them.
    Needs a filesystem shared by the processes. Returns this process's metadata.
    """
    import time

    import jax

    from resblock.errors import HarnessError
    from resblock.golden.merge import merge_files

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    k, n = jax.process_index() + 1, jax.process_count()
    path = Path(path)
    shard_paths = [path.with_name(f"{path.name}.shard-{i}-of-{n}.h5") for i in range(1, n + 1)]
    meta = generate(cases, shard_paths[k - 1], preset=preset, force=True, device=device,
                    jobs=1, shard=f"{k}/{n}", precision=precision, cache_dir=cache_dir,
                    progress=progress)
    if k != 1:
        return meta
    deadline = time.monotonic() + wait_timeout
    while not all(p.exists() for p in shard_paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in shard_paths if not p.exists()]
            raise HarnessError(f"--distributed: shards still missing after {wait_timeout:g} s: "
                               + ", ".join(missing))
        time.sleep(0.2)
    try:
        return merge_files(path, shard_paths, grid=dict(meta["grid"], shard=None),
                           expected_ids=[c.id for c in cases], force=force)
    finally:
        if path.exists():
            for p in shard_paths:
                p.unlink(missing_ok=True)

