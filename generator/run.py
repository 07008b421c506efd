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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


PARALLEL_MIN_WORK_S = 5.0  # estimated execution seconds per worker before splitting groups


def default_jobs(cases, groups) -> int:
    """One process (plus its compile worker) unless execution, not compilation, dominates.

    Compilation is what dominates ordinary grids, and the :class:`CompileWorker` already
    puts it on the second core; splitting groups over processes was measured slower on
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


def _runners(device: str, precision: str):
    import jax

    from resblock.generator.engine import ReferenceRunner

    dev = resolve_device(device)
    devices = [dev] if dev.platform == "cpu" else jax.local_devices(backend=dev.platform)
    return dev, [ReferenceRunner(d, precision=precision) for d in devices]


class CompileWorker:
    """A forked process that compiles the forward of each shape group ahead of time.

    XLA compilation dominates cold runs and holds the GIL, so it cannot overlap with
    this process's own work in a thread; a child forked after the imports and before
    any JAX backend exists (~10 ms) compiles group after group and hands each
    executable over as a serialized file, while this process derives inputs, runs the
    float64 oracle, hashes and writes. If the child fails, this process compiles
    itself: the worker only ever saves time.
    """

    def __init__(self, groups, precision: str):
        self.dir = Path(tempfile.mkdtemp(prefix="resblock-compile-"))
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                import pickle

                from jax.experimental import serialize_executable

                from resblock.generator.engine import compile_forward

                for i, g in enumerate(groups):
                    payload = serialize_executable.serialize(compile_forward(g[0], precision))
                    tmp = self.dir / f".exe-{i}"
                    tmp.write_bytes(pickle.dumps(payload))
                    os.replace(tmp, self.dir / f"exe-{i}")
                code = 0
            except BaseException:  # noqa: BLE001 - the parent falls back to compiling
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        self.alive = True

    def executable(self, i: int):
        """Group ``i``'s executable, waiting for the child; None if it gave up."""
        import pickle
        import time

        from jax.experimental import serialize_executable

        path = self.dir / f"exe-{i}"
        while not path.exists():
            if not self.alive:
                return None
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.alive = False
                continue
            time.sleep(0.002)
        try:
            return serialize_executable.deserialize_and_load(*pickle.loads(path.read_bytes()))
        except Exception:  # noqa: BLE001 - unusable here: the caller compiles instead
            return None

    def close(self):
        if self.alive:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.alive = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _compute_groups(groups, writer, runners, progress=None, compiler=None):
    """Derive (in batches), run and write ``groups`` into an open GoldenWriter.

    On a host with several GPUs, shape groups go round-robin over the local devices.
    ``compiler``: a :class:`CompileWorker` compiling these groups' forwards.
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
                  compile_worker: bool = True):
    """Compute ``groups`` in this process and write them to ``path``.

    With ``compile_worker`` (and a CPU device, several groups, and a process that can
    still fork), a :class:`CompileWorker` compiles the forwards meanwhile.
    """
    from resblock.golden.store import GoldenWriter

    created = provenance.created_timestamp()  # fail on a bad SOURCE_DATE_EPOCH before work
    cache_dir = configure_cache(cache_dir)
    compiler = None
    # With a persistent compilation cache the compilations are cheap when warm, and an
    # executable loaded from that cache does not survive re-serialization (XLA CPU).
    if compile_worker and cache_dir is None and device == "cpu" and len(groups) > 1 \
            and can_fork():
        compiler = CompileWorker(groups, precision)
    try:
        dev, runners = _runners(device, precision)
        with GoldenWriter(path, force=force) as writer:
            _compute_groups(groups, writer, runners, progress, compiler)
            return writer.finish(_metadata(created, dev, precision, cache_dir, grid))
    finally:
        if compiler is not None:
            compiler.close()


def can_fork() -> bool:
    """Forking is safe only on Linux and before this process started a JAX backend
    (XLA's threads do not survive a fork)."""
    if not sys.platform.startswith("linux"):
        return False
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()


def _generate_forked(groups, path, *, jobs, device, grid, force, progress, precision,
                     cache_dir):
    """Split groups over this process and ``jobs - 1`` forked children.

    Forking after the imports and before any JAX backend exists costs a child ~10 ms,
    where a spawned worker re-imports JAX and Flax (~0.6 s): with compilation the bulk
    of the work, two cores then compile two shape groups at a time. Children write
    shard files; this process appends them to its own output.
    """
    from resblock.errors import HarnessError
    from resblock.golden.reader import GoldenFile
    from resblock.golden.store import CASE_ARRAYS, GoldenWriter

    created = provenance.created_timestamp()
    cache_dir = configure_cache(cache_dir)
    bins = [b for b in plan(groups, jobs) if b]
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.shards-", dir=path.parent or "."))
    children = []
    try:
        for i, b in enumerate(bins[1:], start=1):
            shard = tmp / f"shard{i}.h5"
            pid = os.fork()
            if pid == 0:  # child: compute, write the shard, exit without cleanup
                code = 1
                try:
                    _compute_into(b, shard, device=device, grid=grid, force=True,
                                  precision=precision, cache_dir=cache_dir,
                                  compile_worker=False)
                    code = 0
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.append((pid, shard, b))
        dev, runners = _runners(device, precision)
        with GoldenWriter(path, force=force) as writer:
            _compute_groups(bins[0], writer, runners, progress)
            for pid, shard, b in children:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise HarnessError(f"a generator worker process failed (status {status}); "
                                       "its traceback is above")
                with GoldenFile(shard) as gf:
                    for g in b:
                        rows = [gf.case(c.id) for c in g]
                        arrays = {k: np.stack([r.arrays[k] for r in rows]) for k in CASE_ARRAYS}
                        extras = [{"kappa": r.entry["kappa"], "ref_score": r.entry["ref_score"]}
                                  for r in rows]
                        writer.write_group(g, arrays, extras)
                if progress is not None:
                    progress(sum(len(g) for g in b))
            return writer.finish(_metadata(created, dev, precision, cache_dir, grid))
    finally:
        for pid, _, _ in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


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
    if can_fork():
        return _generate_forked(groups, path, jobs=jobs, device=device, grid=grid,
                                force=force, progress=progress, precision=precision,
                                cache_dir=cache_dir)
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
                         num_processes=None, process_id=None, wait_timeout: float = 3600.0,
                         progress=None) -> dict:
    """One process of a ``jax.distributed`` job: compute shard ``process_index+1`` of
    ``process_count`` next to ``path``; process 0 waits for every shard (files are
    renamed into place atomically, so existence means complete) and merges them.
    Needs a filesystem shared by the processes. Returns this process's metadata.
    """
    import jax

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    try:
        return _distributed_body(cases, Path(path), preset=preset, force=force, device=device,
                                 precision=precision, cache_dir=cache_dir,
                                 wait_timeout=wait_timeout, progress=progress)
    finally:
        jax.distributed.shutdown()


def _distributed_body(cases, path, *, preset, force, device, precision, cache_dir,
                      wait_timeout, progress) -> dict:
    import time

    import jax

    from resblock.errors import HarnessError
    from resblock.golden.merge import merge_files

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

