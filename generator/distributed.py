"""``resblock generate --distributed``: one process of a ``jax.distributed`` job."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from resblock.generator import run

HEARTBEAT_S = 1.0  # how often each process touches its .alive file


def peer_timeout() -> float:
    """Seconds without a heartbeat after which process 0 gives up on a peer (default
    120; $RESBLOCK_PEER_TIMEOUT overrides it)."""
    return float(os.environ.get("RESBLOCK_PEER_TIMEOUT", "120"))


class PeerFailed(Exception):
    """A peer process of the job failed or stopped: process 0 stops waiting for it."""


def _side_file(path: Path, kind: str, k: int, n: int) -> Path:
    return path.with_name(f"{path.name}.{kind}-{k}-of-{n}")


class _Heartbeat:
    """Touch a file on the shared filesystem every HEARTBEAT_S seconds, so that process 0
    can tell a slow peer from a dead one."""

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()
        path.touch()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.path.touch()
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.path.unlink(missing_ok=True)


def generate_distributed(cases, path, *, preset=None, force=False, device="cpu",
                         precision="highest", cache_dir=None, coordinator=None,
                         num_processes=None, process_id=None, wait_timeout: float = 3600.0,
                         progress=None, grad: bool = False,
                         stages: bool = False, inference: bool = False) -> dict:
    """One process of a ``jax.distributed`` job: compute shard ``process_index+1`` of
    ``process_count`` next to ``path``; process 0 waits for every shard (files are
    renamed into place atomically, so existence means complete) and merges them.
    Needs a filesystem shared by the processes. Returns this process's metadata.
    """
    import jax

    from resblock.errors import HarnessError

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    try:
        meta = _distributed_body(cases, Path(path), preset=preset, force=force, device=device,
                                 precision=precision, cache_dir=cache_dir,
                                 wait_timeout=wait_timeout, progress=progress, grad=grad,
                                 stages=stages, inference=inference)
    except PeerFailed as e:
        # No orderly shutdown: it is a barrier that a dead peer never reaches.
        raise HarnessError(f"--distributed: {e}") from None
    except BaseException:
        jax.distributed.shutdown()
        raise
    jax.distributed.shutdown()
    return meta


def _distributed_body(cases, path, *, preset, force, device, precision, cache_dir,
                      wait_timeout, progress, grad=False, stages=False,
                      inference=False) -> dict:
    import jax

    from resblock.golden.merge import merge_files

    k, n = jax.process_index() + 1, jax.process_count()
    path = Path(path)
    shard_paths = [path.with_name(f"{path.name}.shard-{i}-of-{n}.h5") for i in range(1, n + 1)]
    alive = [_side_file(path, "alive", i, n) for i in range(1, n + 1)]
    failed = [_side_file(path, "failed", i, n) for i in range(1, n + 1)]
    # What a crashed earlier job left must not pass for this job's work: each process
    # removes its own shard and failure note before it starts, process 0 everybody's.
    for i in (range(n) if k == 1 else (k - 1,)):
        shard_paths[i].unlink(missing_ok=True)
        failed[i].unlink(missing_ok=True)
    beat = _Heartbeat(alive[k - 1])
    try:
        meta = run.generate(cases, shard_paths[k - 1], preset=preset, force=True, device=device,
                            jobs=1, shard=f"{k}/{n}", precision=precision,
                            cache_dir=cache_dir, progress=progress, grad=grad,
                            stages=stages, inference=inference)
    except BaseException as e:  # tell process 0, which would otherwise wait for the shard
        failed[k - 1].write_text(f"{type(e).__name__}: {e}"[:2000], "utf-8")
        raise
    finally:
        beat.stop()
    if k != 1:
        return meta
    _wait_for_shards(shard_paths, alive, failed, wait_timeout)
    try:
        return merge_files(path, shard_paths, grid=dict(meta["grid"], shard=None),
                           expected_ids=[c.id for c in cases], force=force)
    finally:
        if path.exists():
            for p in shard_paths:
                p.unlink(missing_ok=True)



def _wait_for_shards(shard_paths, alive, failed, wait_timeout: float) -> None:
    """Wait until every shard exists; raise PeerFailed as soon as a peer reports a failure
    or its heartbeat stops changing (timed on this process's clock: the peers' clocks may
    differ)."""
    from resblock.errors import HarnessError

    start = time.monotonic()
    limit = peer_timeout()
    seen: dict[int, tuple] = {}  # peer -> (last heartbeat mtime, when it last changed)
    while True:
        missing = [i for i, p in enumerate(shard_paths) if not p.exists()]
        if not missing:
            return
        now = time.monotonic()
        for i in missing:
            if failed[i].exists():
                why = failed[i].read_text("utf-8", errors="replace").strip()
                failed[i].unlink(missing_ok=True)
                raise PeerFailed(f"process {i} failed ({why}); its shard is missing")
            try:
                mtime = alive[i].stat().st_mtime
            except FileNotFoundError:
                mtime = None
            last, since = seen.get(i, (None, start))
            if mtime != last:
                seen[i] = (mtime, now)
            elif now - since > limit:
                what = "never started" if mtime is None else "stopped"
                raise PeerFailed(f"process {i} {what}: no heartbeat for {limit:g} s and no "
                                 f"shard {shard_paths[i].name}")
        if now - start > wait_timeout:
            raise HarnessError(f"--distributed: shards still missing after {wait_timeout:g} s: "
                               + ", ".join(str(shard_paths[i]) for i in missing))
        time.sleep(0.2)
