"""``resblock generate --distributed``: one process of a ``jax.distributed`` job."""

from __future__ import annotations

from pathlib import Path

from resblock.generator import run


def generate_distributed(cases, path, *, preset=None, force=False, device="cpu",
                         precision="highest", cache_dir=None, coordinator=None,
                         num_processes=None, process_id=None, wait_timeout: float = 3600.0,
                         progress=None, grad: bool = False) -> dict:
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
                                 wait_timeout=wait_timeout, progress=progress, grad=grad)
    finally:
        jax.distributed.shutdown()


def _distributed_body(cases, path, *, preset, force, device, precision, cache_dir,
                      wait_timeout, progress, grad=False) -> dict:
    import time

    import jax

    from resblock.errors import HarnessError
    from resblock.golden.merge import merge_files

    k, n = jax.process_index() + 1, jax.process_count()
    path = Path(path)
    shard_paths = [path.with_name(f"{path.name}.shard-{i}-of-{n}.h5") for i in range(1, n + 1)]
    meta = run.generate(cases, shard_paths[k - 1], preset=preset, force=True, device=device,
                    jobs=1, shard=f"{k}/{n}", precision=precision, cache_dir=cache_dir,
                    progress=progress, grad=grad)
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

