"""Generate a golden file from a list of cases (library entry point behind the CLI).

Process machinery (compile worker, forked and spawned workers) lives in
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

from resblock import __version__
from resblock.generator import parallel, provenance
from resblock.generator.grid import definition, group_cases
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


PARALLEL_MIN_WORK_S = 5.0  # estimated execution seconds per worker before splitting groups


def default_jobs(cases, groups) -> int:
    """One process (plus its compile worker) unless execution, not compilation, dominates.

    Compilation is what dominates ordinary grids, and the compile worker
    (:class:`resblock.generator.parallel.CompileWorker`) already puts it on the second
    core; splitting groups over processes was measured slower on
    the benchmark, default and large presets (2.7 vs 2.4 s, 4.6 vs 4.5 s, 4.2 vs 3.8 s).
    Grids with many seconds of float32/float64 work per core are split.
    """
    from resblock.generator.shard import work_cost

    work = sum(work_cost(g) for g in groups)
    jobs = min(os.cpu_count() or 1, len(groups), 8, int(work // PARALLEL_MIN_WORK_S))
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


def _runners(device: str, precision: str, grad: bool = False):
    import jax

    from resblock.generator.engine import ReferenceRunner

    dev = resolve_device(device)
    devices = [dev] if dev.platform == "cpu" else jax.local_devices(backend=dev.platform)
    return dev, [ReferenceRunner(d, precision=precision, grad=grad) for d in devices]


def _compute_groups(groups, writer, runners, progress=None, compiler=None):
    """Derive (in batches), run and write ``groups`` into an open GoldenWriter.

    On a host with several GPUs, shape groups go round-robin over the local devices.
    ``compiler``: a ``parallel.CompileWorker`` compiling these groups' forwards.
    """
    from resblock.generator.batched import derive_cases
    from resblock.generator.engine import compute_group

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
            for g in chunk:
                pending.append(derived[: len(g)])
                derived = derived[len(g):]
        runner = runners[i % len(runners)]
        if compiler is not None:
            compiled = compiler.executable(i)
            if compiled is not None:
                runner.use_executable(group[0].x_shape, compiled)
        arrays, extras = compute_group(group, runner, pending.pop(0))
        writer.write_group(group, arrays, extras)
        if progress is not None:
            progress(len(group))


def _metadata(created, dev, precision, cache_dir, grid) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "spec_version": SPEC_VERSION,
        "kit_version": __version__,
        "created": created,
        "environment": provenance.environment(dev),
        "computation": provenance.computation(precision, cache_dir is not None),
        "grid": grid,
    }


def _compute_into(groups, path, *, device: str, grid: dict, force: bool, progress=None,
                  precision: str = "highest", cache_dir: str | None = None,
                  compile_worker: bool = True, grad: bool = False):
    """Compute ``groups`` in this process and write them to ``path``.

    With ``compile_worker`` (and a CPU device, several groups, and a process that can
    still fork), a ``parallel.CompileWorker`` compiles the forwards meanwhile.
    """
    from resblock.golden.writer import GoldenWriter

    created = provenance.created_timestamp()  # fail on a bad SOURCE_DATE_EPOCH before work
    cache_dir = configure_cache(cache_dir)
    compiler = None
    # With a persistent compilation cache the compilations are cheap when warm, and an
    # executable loaded from that cache does not survive re-serialization (XLA CPU).
    if compile_worker and cache_dir is None and device == "cpu" and len(groups) > 1 \
            and parallel.can_fork():
        compiler = parallel.CompileWorker(groups, precision, grad)
    try:
        dev, runners = _runners(device, precision, grad)
        with GoldenWriter(path, force=force) as writer:
            _compute_groups(groups, writer, runners, progress, compiler)
            return writer.finish(_metadata(created, dev, precision, cache_dir, grid))
    finally:
        if compiler is not None:
            compiler.close()


def generate(cases, path, *, preset: str | None = None, force: bool = False,
             device: str = "cpu", jobs: int | None = None, shard: str | None = None,
             precision: str = "highest", cache_dir: str | None = None,
             progress: Callable[[int], None] | None = None, grad: bool = False) -> dict:
    """Compute every case (or shard ``"K/N"`` of them), write ``path`` atomically, and
    return the metadata written. The metadata records the whole grid, so shards can be
    merged and checked for gaps. ``grad``: also the backward (format 2.1 gradient
    datasets: ``y_bar``, the reference's ``jax.vjp``, the oracle backward, budgets),
    forward and VJP compiled as one program per shape group."""
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
                             progress=progress, precision=precision, cache_dir=cache_dir,
                             grad=grad)
    if parallel.can_fork():
        return parallel.generate_forked(groups, path, jobs=jobs, device=device, grid=grid,
                                force=force, progress=progress, precision=precision,
                                cache_dir=cache_dir, grad=grad)
    return parallel.generate_spawned(groups, path, jobs=jobs, device=device, grid=grid,
                                     force=force,
                              progress=progress, precision=precision, cache_dir=cache_dir,
                              grad=grad)
