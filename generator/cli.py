"""``resblock generate``: run the reference over a grid and write an HDF5 golden."""

from __future__ import annotations

import contextlib
import re

import click

from resblock.spec.cases import FAMILIES, INPUTS


class _NoBar:
    """The progress bar's stand-in when stderr is not a terminal (logs, CI)."""

    def update(self, n):
        pass


class IntList(click.ParamType):
    """Comma-separated non-negative integers and inclusive ranges: ``0-4,7``."""

    name = "ints"

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from resblock.generator.resources import MAX_AXIS_VALUES, axis_count

        ranges: list[tuple[int, int]] = []
        for part in str(value).split(","):
            m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                self.fail(f"{part!r} is not an integer or a range like 0-4", param, ctx)
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if lo < self.minimum or hi < lo:
                self.fail(f"{part!r}: values must be >= {self.minimum} and ranges "
                          "ascending", param, ctx)
            ranges.append((lo, hi))
        count = axis_count(ranges)  # counted before anything is expanded
        if count > MAX_AXIS_VALUES:
            self.fail(f"{value!r} expands to {count} values, more than {MAX_AXIS_VALUES}",
                      param, ctx)
        return tuple(dict.fromkeys(v for lo, hi in ranges for v in range(lo, hi + 1)))


class PositiveGB(click.ParamType):
    """A finite amount of memory in GB, more than 0 (``nan`` and ``inf`` are refused:
    click's FloatRange lets both through)."""

    name = "GB"

    def convert(self, value, param, ctx):
        import math

        try:
            gb = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of GB", param, ctx)
        if not (math.isfinite(gb) and gb > 0):
            self.fail(f"{value!r} is not a finite number of GB above 0", param, ctx)
        return gb


class Shapes(click.ParamType):
    """Comma-separated ``HxW`` or ``HxWxC`` shapes: ``4x4,7x13``."""

    name = "shapes"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in str(value).split(","):
            m = re.fullmatch(r"\s*(-?\d+)x(-?\d+)(?:x(-?\d+))?\s*", part)
            if not m:
                self.fail(f"{part!r} is not a shape like 4x4 or 7x13 (HxW) or 4x4x8 (HxWxC)",
                          param, ctx)
            dims = tuple(int(g) for g in m.groups() if g is not None)
            if any(d < 1 for d in dims):
                self.fail(f"{part!r}: sizes must be positive", param, ctx)
            out.append(dims)
        return tuple(out)


def _choices(allowed):
    class _Choices(click.ParamType):
        name = "list"

        def convert(self, value, param, ctx):
            if isinstance(value, tuple):
                return value
            items = tuple(v.strip() for v in str(value).split(",") if v.strip())
            bad = [v for v in items if v not in allowed]
            if bad or not items:
                self.fail(f"{value!r}: expected a comma list of {', '.join(allowed)}",
                          param, ctx)
            return items

    return _Choices()


def _preset_names():
    from resblock.generator.grid import PRESETS

    return list(PRESETS)


@click.command("generate")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Golden HDF5 file to write (never overwritten without --force).")
@click.option("--preset", type=click.Choice(_preset_names()), default=None,
              help="A named grid (default, smoke, bench, large, resnet18: the four "
                   "ResNet-18 stages at batch 32). Excludes the axis options.")
@click.option("--family", "families", type=_choices(list(FAMILIES)),
              default="seeded", show_default=True)
@click.option("--inputs", type=_choices(list(INPUTS)), default="normal", show_default=True,
              help="Input kinds (spec/cases.py INPUTS): " + ", ".join(INPUTS) + ".")
@click.option("--seeds", type=IntList(0), default="0", show_default=True)
@click.option("--shapes", type=Shapes(), default="4x4", show_default=True)
@click.option("--features", type=IntList(1), default="4", show_default=True)
@click.option("--batch", type=IntList(1), default="1", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True, help="Where the reference forward runs (inputs: always CPU).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per core for grids of 24+ cases).")
@click.option("--shard", metavar="K/N", default=None,
              help="Compute only shard K of N (balanced by cost); combine with `merge`.")
@click.option("--distributed", is_flag=True,
              help="Run as one process of a jax.distributed job (shard from process index; "
                   "process 0 merges). Cluster auto-detected unless the options below.")
@click.option("--coordinator", metavar="HOST:PORT", default=None)
@click.option("--num-processes", type=click.IntRange(min=1), default=None)
@click.option("--process-id", type=click.IntRange(min=0), default=None)
@click.option("--precision", type=click.Choice(["highest", "default"]), default="highest",
              show_default=True,
              help="'default' lets GPUs use TF32 and breaks the spec: only for demonstrating "
                   "that verify/diff reject such goldens.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="JAX persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR); "
                   "warm runs skip compilation.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--grad/--no-grad", default=False, show_default=True,
              help="Also store the backward (y_bar, jax.vjp gradients, the float64 oracle "
                   "backward and its budgets; spec section 10) for `check --api backward`, "
                   "as the committed set does. Forward-only files are about 45% smaller.")
@click.option("--stages/--no-stages", default=False, show_default=True,
              help="Also store the stage data (float64 oracles and budgets of the six "
                   "stages: the first diverging stage of a check). Without it a checker "
                   "recomputes it from the inputs when it needs it; at real sizes it is "
                   "five times the bytes of everything else.")
@click.option("--inference/--no-inference", default=False, show_default=True,
              help="Also store the inference block (running statistics derived from the "
                   "case key, the Flax reference with use_running_average=True, the float64 "
                   "oracle, its budgets and spreads; spec section 12) for `check --api "
                   "inference`, as the committed set does. Adds about 90% to a "
                   "forward-only file's bytes before compression (10% to the committed "
                   "set's, which has the backward and the stage data).")
@click.option("--memory-limit", type=PositiveGB(), default=None,
              metavar="GB", help="Refuse a grid whose largest shape group needs more memory "
                                 "than this (default: 80% of this machine's memory).")
@click.pass_context
def generate(ctx, output, preset, families, inputs, seeds, shapes, features, batch, device,
             jobs, shard, distributed, coordinator, num_processes, process_id, precision,
             cache_dir, force, grad, stages, inference, memory_limit):
    """Run the reference block over a grid of cases and write an HDF5 golden file."""
    import os

    from resblock.errors import GridError
    from resblock.generator import grid

    axis_opts = ("families", "inputs", "seeds", "shapes", "features", "batch")
    src = click.core.ParameterSource
    explicit = [a for a in axis_opts if ctx.get_parameter_source(a) == src.COMMANDLINE]
    if preset and explicit:
        raise click.UsageError(f"--preset cannot be combined with axis options ({explicit})")
    from resblock.golden.writer import check_output_path

    check_output_path(output)  # before any work: a file where a folder should be
    if os.path.exists(output) and not force:
        raise click.UsageError(f"{output} exists; pass --force to replace it")
    from resblock.generator import resources

    try:
        if not preset:
            resources.check_grid_size({"families": families, "inputs": inputs,
                                       "batches": batch, "shapes": shapes,
                                       "features": features, "seeds": seeds})
        cases = grid.preset_cases(preset) if preset else grid.axes_cases(
            families=families, inputs=inputs, batches=batch, shapes=shapes,
            features=features, seeds=seeds)
        resources.check_memory(cases, memory_limit, grad=grad, inference=inference)
    except GridError as e:
        raise click.UsageError(str(e)) from None
    import importlib.util

    missing = [m for m in ("jax", "flax") if importlib.util.find_spec(m) is None]
    if missing:
        from resblock.errors import HarnessError

        raise HarnessError(f"generate runs the Flax reference, and {' and '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: "
                           "pip install \".[jax]\" in a resblock checkout, or "
                           "\"resblock[jax] @ git+<repository URL>\" (the kit is not on "
                           "PyPI; checking an implementation needs neither)")

    if shard and distributed:
        raise click.UsageError("--shard and --distributed are exclusive (--distributed takes "
                               "the shard from the process index)")
    if shard:
        from resblock.generator.shard import parse_shard, shard_cases

        try:
            k, n = parse_shard(shard)
            shard_size = len(shard_cases(cases, k, n))
        except GridError as e:
            raise click.UsageError(str(e)) from None
    if device != "cpu":
        # Deterministic XLA GPU kernels (set before JAX starts its backend).
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true").strip()
    if precision != "highest":
        click.echo("warning: --precision default does not follow the spec (TF32 on GPUs); "
                   "verify will reject what it produces", err=True)

    from resblock.generator import run as runmod

    total = shard_size if shard else len(cases)
    click.echo(f"generating {total} cases -> {output}", err=True)
    if not preset and "seeded" in families and any(b != 1 for b in batch):
        click.echo("note: seeded cases take batch 1 only (the problem's API); the other "
                   "--batch values apply to the functional and stress families", err=True)
    err = click.get_text_stream("stderr")
    bar_cm = (click.progressbar(length=total, label="cases", file=err, show_pos=True)
              if err.isatty() else contextlib.nullcontext(_NoBar()))
    with bar_cm as bar:
        if distributed:
            from resblock.generator.distributed import generate_distributed

            meta = generate_distributed(
                cases, output, preset=preset, force=force, device=device, precision=precision,
                cache_dir=cache_dir, coordinator=coordinator, num_processes=num_processes,
                process_id=process_id, progress=bar.update, grad=grad, stages=stages,
                inference=inference)
        else:
            meta = runmod.generate(cases, output, preset=preset, force=force, device=device,
                                   jobs=jobs, shard=shard, precision=precision,
                                   cache_dir=cache_dir, progress=bar.update, grad=grad,
                                   stages=stages, inference=inference)
    if not meta["cases"]:
        return
    worst = max(meta["cases"], key=lambda e: e["ref_score"])
    click.echo(f"wrote {output}: {len(meta['cases'])} cases, content sha256 "
               f"{meta['content_sha256'][:16]}..., worst reference score {worst['ref_score']:.3g} "
               f"({worst['id']}), device {meta['environment']['device']}")
