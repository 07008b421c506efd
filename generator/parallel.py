"""Using both cores for the shape groups themselves: forked group workers
(:func:`generate_forked`) or spawned ones (:func:`generate_spawned`), each computing its
share into a shard file with :func:`resblock.generator.compute.compute_into`.

Everything here exists because XLA compilation dominates cold generation and holds
the GIL: the second core can only be used by a second process. Forking is cheap
(~10 ms) but safe only before this process starts a JAX backend
(:func:`resblock.generator.compile_worker.can_fork`); otherwise workers are spawned and
re-import JAX (~0.6 s each).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from resblock.generator import compute, provenance
from resblock.generator.shard import plan


def generate_forked(groups, path, *, jobs, device, grid, force, progress, precision,
                     cache_dir, grad=False, stages=False, inference=False):
    """Split groups over this process and ``jobs - 1`` forked children.

    Forking after the imports and before any JAX backend exists costs a child ~10 ms,
    where a spawned worker re-imports JAX and Flax (~0.6 s): with compilation the bulk
    of the work, two cores then compile two shape groups at a time. Children write
    shard files; this process appends them to its own output.
    """
    from resblock.errors import HarnessError
    from resblock.golden.reader import GoldenFile
    from resblock.golden.writer import GoldenWriter

    created = provenance.created_timestamp()
    cache_dir = compute.configure_cache(cache_dir)
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
                    compute.compute_into(b, shard, device=device, grid=grid, force=True,
                                         precision=precision, cache_dir=cache_dir,
                                         compile_worker=False, grad=grad, stages=stages,
                                         inference=inference)
                    code = 0
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.append((pid, shard, b))
        dev, runners = compute.device_runners(device, precision, grad)
        with GoldenWriter(path, force=force) as writer:
            compute.compute_groups(bins[0], writer, runners, progress, stages=stages,
                                   inference=inference)
            for pid, shard, b in children:
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise HarnessError(f"a generator worker process failed (status {status}); "
                                       "its traceback is above")
                with GoldenFile(shard) as gf:
                    for g in b:
                        writer.copy_group(g, [gf.case(c.id) for c in g])
                if progress is not None:
                    progress(sum(len(g) for g in b))
            return writer.finish(compute.metadata(created, dev, precision, cache_dir, grid))
    finally:
        for pid, _, _ in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _worker(args):  # runs in a worker process
    (case_ids, path, device, grid, queue, precision, cache_dir, grad, stages,
     inference) = args
    from resblock.generator.grid import group_cases as _group
    from resblock.spec.cases import Case

    groups = _group([Case.from_id(i) for i in case_ids])
    compute.compute_into(groups, path, device=device, grid=grid, force=True,
                         precision=precision, cache_dir=cache_dir, grad=grad, stages=stages,
                         inference=inference,
                         progress=(lambda n: queue.put(n)) if queue is not None else None)
    return path


def generate_spawned(groups, path, *, jobs, device, grid, force, progress, precision,
                       cache_dir, grad=False, stages=False, inference=False):
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
                 precision, cache_dir, grad, stages, inference) for i, b in enumerate(bins)]
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


