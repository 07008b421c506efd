"""Deterministic splits of a grid: over worker processes, and ``--shard K/N`` for job arrays.

Units are whole shape groups (one compilation each); when a grid has fewer groups than
shards, groups are split into single cases. Units are assigned longest-first to the
least-loaded bin (LPT), by estimated cost rather than by count, so every job of a
SLURM array, Kubernetes indexed job or CI matrix gets about the same work.
"""

from __future__ import annotations

import re

from resblock.errors import GridError
from resblock.generator.grid import group_cases

COMPILE_S = 0.15  # one XLA compilation of the forward (measured 0.1-0.15 s here)


def unit_cost(cases) -> float:
    """Rough seconds: one compilation per unit plus FLOP-proportional work per case."""
    return COMPILE_S + work_cost(cases)


def work_cost(cases) -> float:
    """Rough seconds of execution (float32 forward, float64 oracle, hashing, I/O)."""
    if not cases:
        return 0.0
    c = cases[0]
    flops = 2 * 2 * c.n * c.h * c.w * c.features * c.features * 9
    return len(cases) * (3e-3 + flops / 5e9)


def backward_cost(cases) -> float:
    """Rough seconds ``--grad`` adds to execution (the float64 backward oracle, the
    backward error and spread models, the VJP): 5 ms per case and 4 + 0.25 F us per
    value of ``y``, measured per case at 1x16x16x16 to 2x28x28x32 (8-12 us per value;
    the forward's whole execution is 0.5-1.4)."""
    if not cases:
        return 0.0
    c = cases[0]
    return len(cases) * (5e-3 + c.n * c.h * c.w * c.features * (4e-6 + 2.5e-7 * c.features))


def plan(units, bins: int) -> list[list]:
    """Longest-processing-time assignment of ``units`` (lists of cases) to ``bins``."""
    out: list[list] = [[] for _ in range(bins)]
    load = [0.0] * bins
    order = sorted(units, key=lambda u: (-unit_cost(u), u[0].id))
    for u in order:
        i = load.index(min(load))
        out[i].append(u)
        load[i] += unit_cost(u)
    return [sorted(b, key=lambda u: u[0].id) for b in out]


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise GridError(f"--shard {text!r}: expected K/N, e.g. 1/4 (K counts from 1)")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= k <= n:
        raise GridError(f"--shard {text!r}: need 1 <= K <= N")
    return k, n


def shard_cases(cases, k: int, n: int) -> list:
    """The cases of shard ``k`` of ``n`` (1-based): deterministic, balanced by cost."""
    groups = group_cases(cases)
    units = groups if len(groups) >= n else [[c] for g in groups for c in g]
    if len(units) < n:
        raise GridError(f"--shard {k}/{n}: the grid has only {len(units)} cases; "
                        f"use at most {len(units)} shards")
    mine = plan(units, n)[k - 1]
    return [c for u in mine for c in u]
