"""``resblock verify``, ``list`` and ``show``: what is in a golden file, and is it sound."""

from __future__ import annotations

import sys

import click

from resblock.options import PROFILE


def default_goldens() -> list[str]:
    """The committed golden files shipped with the kit (listed in golden/MANIFEST.json)."""
    from resblock.golden.manifest import committed_paths

    return [str(p) for p in committed_paths()]


@click.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--profile", default="fp32", show_default=True,
              type=PROFILE)
@click.option("-v", "--verbose", is_flag=True, help="One line per case.")
@click.option("--no-derive", is_flag=True,
              help="Skip re-deriving the inputs from the case ids (saves JAX's start-up and "
                   "~1-2 s of compilation; the hashes still cover the inputs).")
def verify(paths, profile, verbose, no_derive):
    """Check schema, structure, hashes, and the reference against its float64 oracle.

    Without PATHS, verifies the committed default golden set and its manifest.
    """
    from resblock.golden.manifest import manifest_problems
    from resblock.golden.verify import verify_file

    problems = []
    if not paths:
        paths = default_goldens()
        problems.extend(manifest_problems())
    ok = not problems
    for p in problems:
        click.echo(f"FAIL {p}")
    for path in paths:
        v = verify_file(path, profile, derive=not no_derive)
        ok &= v.ok
        if v.cases:
            worst = max(v.cases, key=lambda c: c.score)
            status = "ok  " if v.ok else "FAIL"
            click.echo(f"{status} {path}: {len(v.cases)} cases; worst reference score "
                       f"{worst.score:.3g} ({worst.id}, kappa {worst.kappa:.3g}, max |y32-y64| "
                       f"{worst.max_abs_dev:.3g}) under profile {profile}")
        if verbose:
            for c in v.cases:
                click.echo(f"     {c.id:40s} kappa {c.kappa:10.4g}  max|dev| "
                           f"{c.max_abs_dev:9.3g}  score {c.score:8.3g}")
        for p in v.problems:
            click.echo(f"FAIL {p}")
        for note in v.notes:
            click.echo(f"note {note}")
    sys.exit(0 if ok else 1)


@click.command("list")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
def list_cases(path):
    """List the cases of a golden file (default: the committed set)."""
    from resblock.golden.reader import GoldenFile

    for p in [path] if path else default_goldens():
        with GoldenFile(p) as gf:
            m = gf.metadata
            grid = m["grid"]["preset"] or "none (explicit axes)"
            click.echo(f"# {p}: format {m['format_version']}, spec {m['spec_version']}, "
                       f"{len(gf.entries)} cases, preset {grid}")
            for e in gf.entries:
                click.echo(f"{e['id']:40s} {e['family']:10s} {e['inputs']:7s} "
                           f"kappa {e['kappa']:.3g}")


@click.command("show")
@click.argument("args", nargs=-1, required=True, metavar="[FILE] CASE_ID")
def show(args):
    """Show one case: fields, arrays with shapes, and summary values (default file: the
    committed set, as for `list`)."""
    import numpy as np

    from resblock.errors import GoldenFormatError
    from resblock.golden.reader import GoldenFile

    if len(args) > 2:
        raise click.UsageError("expected [FILE] CASE_ID")
    case_id = args[-1]
    paths = [args[0]] if len(args) == 2 else default_goldens()
    path = next((p for p in paths[:-1] if _has_case(p, case_id)), paths[-1])
    if len(args) == 1 and not _has_case(path, case_id):
        raise GoldenFormatError(f"no case {case_id!r} in the committed set; `resblock list` "
                                "shows the ids (give FILE CASE_ID for another file)")
    with GoldenFile(path) as gf:
        # What check, verify and diff refuse, show refuses too: an index entry edited
        # (kappa, reference score, a digest) fails its case hash; the arrays shown below
        # are verified against their part digests as they are read.
        problems = gf.index_problems()
        if problems:
            raise GoldenFormatError(f"{path}: {problems[0]}" + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + "; the file was edited after it was sealed: regenerate it")
        gc = gf.case(case_id)
        for k, v in gc.entry.items():
            click.echo(f"{k:10s} {v}")
        for name, a in gc.arrays.items():
            click.echo(f"  {name:38s} {str(a.dtype):8s} {str(a.shape):18s} "
                       f"min {np.min(a): .4g}  max {np.max(a): .4g}")
        if not gc.has_stages:
            click.echo("  (no stage data stored: check recomputes the stages' oracles and "
                       "budgets from the inputs when it needs them; `resblock generate "
                       "--stages` stores them)")


def _has_case(path, case_id) -> bool:
    from resblock.golden.reader import GoldenFile

    with GoldenFile(path) as gf:
        return any(e["id"] == case_id for e in gf.entries)


@click.command("merge")
@click.argument("output", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--allow-gaps", is_flag=True, help="Accept shards that do not cover the grid.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def merge(output, inputs, allow_gaps, force):
    """Combine shard golden files (from `generate --shard K/N`) into OUTPUT.

    Refuses overlapping shards, gaps in the grid (unless --allow-gaps), and shards whose
    spec, format, library versions, device, precision or flags differ.
    """
    from resblock.errors import GoldenFormatError
    from resblock.generator.grid import cases_from_definition
    from resblock.golden.merge import merge_files
    from resblock.golden.reader import GoldenFile

    with GoldenFile(inputs[0]) as first:
        grid = dict(first.metadata["grid"], shard=None)
    expected = [c.id for c in cases_from_definition(grid["definition"])]
    for p in inputs[1:]:
        with GoldenFile(p) as gf:
            if gf.metadata["grid"]["definition"] != grid["definition"]:
                raise GoldenFormatError(f"{p} is a shard of a different grid than {inputs[0]}")
    meta = merge_files(output, list(inputs), grid=grid, expected_ids=expected,
                       allow_gaps=allow_gaps, force=force)
    click.echo(f"merged {len(inputs)} files -> {output}: {len(meta['cases'])} of "
               f"{len(expected)} grid cases, content sha256 {meta['content_sha256'][:16]}...")


@click.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--profile", default="fp32", show_default=True,
              type=PROFILE)
@click.option("--subset", is_flag=True,
              help="The sets may hold different cases: compare the common ones only "
                   "(default: a case missing on either side means DISAGREE).")
def diff(a, b, profile, subset):
    """Compare two golden sets case by case; exit 0 when they agree.

    Inputs must be bit-identical; outputs are judged with the spec's tolerance rule
    against the other set's float64 oracle.
    """
    from resblock.golden.diff import diff_files, format_diff

    res = diff_files(a, b, profile, subset=subset)
    click.echo(format_diff(res))
    sys.exit(0 if res.agree else 1)
