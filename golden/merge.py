"""Combine golden files (shards of one grid) into one, refusing what does not belong.

Used by ``resblock generate`` with several worker processes and by ``resblock merge``
for shards made by ``--shard K/N`` (one per job of a SLURM array, a Kubernetes indexed
job or a CI matrix). Memory is bounded by one shape group.
"""

from __future__ import annotations

from resblock.errors import GoldenFormatError

# Metadata that must agree between shards: they change computed bits.
MUST_AGREE = (
    ("format_version",),
    ("spec_version",),
    ("environment", "jax"),
    ("environment", "jaxlib"),
    ("environment", "flax"),
    ("environment", "numpy"),
    ("environment", "backend"),
    ("environment", "device"),
    ("computation", "precision"),
    ("computation", "xla_flags"),
    ("computation", "prng"),
)


def _get(meta, path):
    for p in path:
        meta = meta[p]
    return meta


def merge_files(out, inputs, *, grid: dict | None = None, expected_ids=None,
                allow_gaps: bool = False, force: bool = False) -> dict:
    """Merge golden files ``inputs`` into ``out``; return the written metadata.

    Refuses: files that disagree on anything in MUST_AGREE, a case present in two
    inputs (overlap), and, when ``expected_ids`` is given, missing cases (gaps) unless
    ``allow_gaps``, or cases outside it.
    """
    from resblock.golden.reader import GoldenFile
    from resblock.golden.writer import GoldenWriter

    if not inputs:
        raise GoldenFormatError("merge: no input files")
    files = [GoldenFile(p) for p in inputs]
    try:
        first = files[0].metadata
        for f in files:
            problems = f.hash_problems()
            if problems:
                raise GoldenFormatError(f"merge: {f.path}: {problems[0]}")
            for path in MUST_AGREE:
                a, b = _get(first, path), _get(f.metadata, path)
                if a != b:
                    raise GoldenFormatError(
                        f"merge: {f.path} has {'.'.join(path)} = {b!r} but {files[0].path} "
                        f"has {a!r}; shards must come from the same environment and settings"
                    )
        owner: dict[str, object] = {}
        for f in files:
            for e in f.entries:
                if e["id"] in owner:
                    raise GoldenFormatError(
                        f"merge: case {e['id']} is in both {owner[e['id']].path} and "
                        f"{f.path} (overlapping shards)")
                owner[e["id"]] = f
        if expected_ids is not None:
            expected = set(expected_ids)
            extra = sorted(set(owner) - expected)
            if extra:
                raise GoldenFormatError(f"merge: {len(extra)} cases are not in the grid, "
                                        f"e.g. {extra[0]}")
            missing = sorted(expected - set(owner))
            if missing and not allow_gaps:
                raise GoldenFormatError(
                    f"merge: {len(missing)} cases of the grid are missing (e.g. {missing[0]}); "
                    "generate the missing shards, or pass --allow-gaps")
        from resblock.spec.cases import Case

        groups: dict[str, list] = {}
        for cid, f in owner.items():
            case = Case.from_id(cid)
            groups.setdefault(case.group, []).append((case, f))
        with GoldenWriter(out, force=force) as w:
            for name in sorted(groups):
                members = sorted(groups[name], key=lambda m: m[0])
                w.copy_group([m[0] for m in members], [f.case(c.id) for c, f in members])
            meta = {k: first[k] for k in ("format_version", "spec_version", "kit_version",
                                          "environment", "computation")}
            meta["created"] = max(f.metadata["created"] for f in files)
            meta["grid"] = grid if grid is not None else dict(first["grid"], shard=None)
            return w.finish(meta)
    finally:
        for f in files:
            f.close()
