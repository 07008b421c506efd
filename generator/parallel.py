"""Using both cores: a compile worker, forked group workers, spawned workers.

Everything here exists because XLA compilation dominates cold generation and holds
the GIL: the second core can only be used by a second process. Forking is cheap
(~10 ms) but safe only before this process starts a JAX backend (:func:`can_fork`);
otherwise workers are spawned and re-import JAX (~0.6 s each).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from resblock.generator import provenance
from resblock.generator.shard import plan

# resblock.generator.run imports this module; its helpers are looked up at call time.
from resblock.generator import run  # noqa: E402,I001  isort: skip


class CompileWorker:
    """A forked process that compiles the forward of each shape group ahead of time.

    XLA compilation dominates cold runs and holds the GIL, so it cannot overlap with
    this process's own work in a thread; a child forked after the imports and before
    any JAX backend exists (~10 ms) compiles group after group and hands each
    executable over as a serialized file, while this process derives inputs, runs the
    float64 oracle, hashes and writes. If the child fails, this process compiles
    itself: the worker only ever saves time.
    """

    def __init__(self, groups, precision: str, grad: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="resblock-compile-"))
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                import pickle

                from jax.experimental import serialize_executable

                from resblock.generator.engine import compile_forward

                for i, g in enumerate(groups):
                    exe = (compile_forward(g[0], precision, grad=True) if grad
                           else compile_forward(g[0], precision))
                    payload = serialize_executable.serialize(exe)
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


def can_fork() -> bool:
    """Forking is safe only on Linux and before this process started a JAX backend
    (XLA's threads do not survive a fork)."""
    if not sys.platform.startswith("linux"):
        return False
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized()


def generate_forked(groups, path, *, jobs, device, grid, force, progress, precision,
                     cache_dir, grad=False):
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
    cache_dir = run.configure_cache(cache_dir)
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
                    run._compute_into(b, shard, device=device, grid=grid, force=True,
                                  precision=precision, cache_dir=cache_dir,
                                  compile_worker=False, grad=grad)
                    code = 0
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.append((pid, shard, b))
        dev, runners = run._runners(device, precision, grad)
        with GoldenWriter(path, force=force) as writer:
            run._compute_groups(bins[0], writer, runners, progress)
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
            return writer.finish(run._metadata(created, dev, precision, cache_dir, grid))
    finally:
        for pid, _, _ in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _worker(args):  # runs in a worker process
    case_ids, path, device, grid, queue, precision, cache_dir, grad = args
    from resblock.generator.grid import group_cases as _group
    from resblock.spec.cases import Case

    groups = _group([Case.from_id(i) for i in case_ids])
    run._compute_into(groups, path, device=device, grid=grid, force=True, precision=precision,
                  cache_dir=cache_dir, grad=grad,
                  progress=(lambda n: queue.put(n)) if queue is not None else None)
    return path


def generate_spawned(groups, path, *, jobs, device, grid, force, progress, precision,
                       cache_dir, grad=False):
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
                 precision, cache_dir, grad) for i, b in enumerate(bins)]
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


