"""Computing shape groups in this process into one golden file: the work of
:func:`resblock.generator.run.generate` with one job, and of each worker process of
:mod:`resblock.generator.parallel`.

Inputs are derived in batches (:mod:`resblock.generator.batched`), the reference runs on
the chosen device (shape groups round-robin over a host's GPUs), and a compile worker
(:mod:`resblock.generator.compile_worker`) compiles the forwards on the second core
meanwhile when it can.
"""

from __future__ import annotations

import os

from resblock import __version__
from resblock.generator import provenance
from resblock.generator.compile_worker import CompileWorker, can_fork
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


def device_runners(device: str, precision: str, grad: bool = False):
    """The device of ``device`` and a ReferenceRunner on it, or on each local device of
    its kind (a host's GPUs)."""
    import jax

    from resblock.generator.engine import ReferenceRunner

    dev = resolve_device(device)
    devices = [dev] if dev.platform == "cpu" else jax.local_devices(backend=dev.platform)
    return dev, [ReferenceRunner(d, precision=precision, grad=grad) for d in devices]


def compute_groups(groups, writer, runners, progress=None, compiler=None, stages=False,
                   inference=False):
    """Derive (in batches), run and write ``groups`` into an open GoldenWriter.

    On a host with several GPUs, shape groups go round-robin over the local devices.
    ``compiler``: a :class:`~resblock.generator.compile_worker.CompileWorker` compiling
    these groups' forwards. ``stages``: store the stage data too (format 5);
    ``inference``: the inference block (format 6).
    """
    from resblock.generator.batched import derive_cases, derive_cases_and_y_bars
    from resblock.generator.engine import compute_group
    from resblock.generator.resources import LARGE_ALLOCATION, return_large_allocations

    grad = any(getattr(r, "grad", False) for r in runners)
    if any(g[0].n * g[0].h * g[0].w * g[0].features * 4 >= LARGE_ALLOCATION for g in groups):
        return_large_allocations()  # memory bounded from group to group
    pending: list = []
    for i, group in enumerate(groups):
        if not pending:  # derive the next chunk of groups in one batch
            chunk, n = [], 0
            for g in groups[i:]:
                if chunk and n + len(g) > DERIVE_CHUNK:
                    break
                chunk.append(g)
                n += len(g)
            flat = [c for g in chunk for c in g]
            if grad:  # the cotangents in the same draw programs as the inputs
                derived, bars = derive_cases_and_y_bars(flat)
            else:
                derived, bars = derive_cases(flat), [None] * len(flat)
            for g in chunk:
                pending.append((derived[: len(g)], bars[: len(g)]))
                derived, bars = derived[len(g):], bars[len(g):]
        runner = runners[i % len(runners)]
        if compiler is not None:
            compiled = compiler.executable(i)
            if compiled is not None:
                runner.use_executable(group[0].x_shape, compiled)
        inputs, y_bars = pending.pop(0)
        arrays, extras = compute_group(group, runner, inputs, stages=stages,
                                       inference=inference, y_bars=y_bars)
        writer.write_group(group, arrays, extras)
        if progress is not None:
            progress(len(group))


def metadata(created, dev, precision, cache_dir, grid) -> dict:
    """The metadata of a golden file computed on ``dev``."""
    return {
        "format_version": FORMAT_VERSION,
        "spec_version": SPEC_VERSION,
        "kit_version": __version__,
        "created": created,
        "environment": provenance.environment(dev),
        "computation": provenance.computation(precision, cache_dir is not None),
        "grid": grid,
    }


def compute_into(groups, path, *, device: str, grid: dict, force: bool, progress=None,
                 precision: str = "highest", cache_dir: str | None = None,
                 compile_worker: bool = True, grad: bool = False, stages: bool = False,
                 inference: bool = False):
    """Compute ``groups`` in this process and write them to ``path``.

    With ``compile_worker`` (and a CPU device, several groups, and a process that can
    still fork), a :class:`~resblock.generator.compile_worker.CompileWorker` compiles the
    forwards meanwhile.
    """
    from resblock.golden.writer import GoldenWriter

    created = provenance.created_timestamp()  # fail on a bad SOURCE_DATE_EPOCH before work
    cache_dir = configure_cache(cache_dir)
    compiler = None
    # With a persistent compilation cache the compilations are cheap when warm, and an
    # executable loaded from that cache does not survive re-serialization (XLA CPU).
    if compile_worker and cache_dir is None and device == "cpu" and len(groups) > 1 \
            and can_fork():
        compiler = CompileWorker(groups, precision, grad)
    try:
        dev, runners = device_runners(device, precision, grad)
        with GoldenWriter(path, force=force) as writer:
            compute_groups(groups, writer, runners, progress, compiler, stages=stages,
                           inference=inference)
            return writer.finish(metadata(created, dev, precision, cache_dir, grid))
    finally:
        if compiler is not None:
            compiler.close()
