"""Generate a golden file from a list of cases (library entry point behind the CLI)."""

from __future__ import annotations

from collections.abc import Callable

from resblock import __version__
from resblock.generator import provenance
from resblock.generator.grid import definition, group_cases
from resblock.golden.store import GoldenWriter
from resblock.spec.constants import FORMAT_VERSION, SPEC_VERSION


def resolve_device(kind: str = "cpu"):
    """The JAX device for ``cpu``, ``gpu`` or ``auto`` (GPU when one is present)."""
    import jax

    from resblock.errors import HarnessError

    if kind == "cpu":
        return jax.devices("cpu")[0]
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        if kind == "auto":
            return jax.devices("cpu")[0]
        raise HarnessError("--device gpu: JAX sees no GPU here (jax.devices('gpu') failed); "
                           "install jax[cuda12] or use --device cpu") from None


def generate(cases, path, *, preset: str | None = None, force: bool = False,
             device: str = "cpu", progress: Callable[[int], None] | None = None) -> dict:
    """Compute every case, write ``path`` atomically, and return the metadata written."""
    from resblock.generator.engine import ReferenceRunner, compute_group

    dev = resolve_device(device)
    runner = ReferenceRunner(dev)
    with GoldenWriter(path, force=force) as writer:
        for group in group_cases(cases):
            arrays, extras = compute_group(group, runner)
            writer.write_group(group, arrays, extras)
            if progress is not None:
                progress(len(group))
        return writer.finish({
            "format_version": FORMAT_VERSION,
            "spec_version": SPEC_VERSION,
            "kit_version": __version__,
            "created": provenance.created_timestamp(),
            "environment": provenance.environment(dev),
            "computation": provenance.computation(),
            "grid": {"preset": preset, "definition": definition(preset, cases), "shard": None},
        })
