"""Case grids: named presets (tables of rows) and explicit axes (a filtered product).

The default preset is not a full cross product: its rows are chosen so that every axis
value and every named pitfall of the conformance table is exercised within the ~10 MB
budget of the committed set (coverage table in spec/SPEC.md section 5.3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from resblock.errors import GridError
from resblock.spec.cases import Case, unique


@dataclass(frozen=True)
class Row:
    """A preset row: one shape group of one family/input kind over a list of seeds."""

    family: str
    inputs: str
    n: int
    shape: tuple[int, int]
    features: int
    seeds: tuple[int, ...]
    why: str = ""

    def cases(self) -> list[Case]:
        h, w = self.shape
        return [Case(self.family, self.inputs, self.n, h, w, self.features, s) for s in self.seeds]


_S = "seeded"
_F = "functional"
_X = "stress"

DEFAULT_ROWS: tuple[Row, ...] = (
    Row(_S, "normal", 1, (4, 4), 4, (0, 1, 2, 3), "the problem's worked example"),
    Row(_S, "normal", 1, (1, 1), 4, (0, 1), "1x1, batch 1: variance exactly 0"),
    Row(_S, "normal", 1, (2, 2), 2, (0, 1), "2x2"),
    Row(_S, "normal", 1, (3, 5), 4, (0, 1), "odd, non-square: H/W swaps"),
    Row(_S, "normal", 1, (7, 13), 8, (0, 1), "odd, non-square"),
    Row(_S, "normal", 1, (8, 8), 1, (0, 1), "features 1"),
    Row(_S, "normal", 1, (8, 8), 16, (0, 1), "features 16"),
    Row(_S, "normal", 1, (16, 16), 8, (0,), "16x16"),
    Row(_S, "normal", 1, (16, 16), 16, (0,), "16x16 x 16"),
    Row(_S, "normal", 1, (8, 8), 32, (0,), "features 32"),
    Row(_S, "normal", 1, (6, 6), 64, (0,), "features 64"),
    Row(_F, "normal", 1, (4, 4), 4, (0, 1), "explicit non-init parameters, batch 1"),
    Row(_F, "normal", 2, (4, 4), 4, (0, 1), "batch 2: per-sample vs batch statistics"),
    Row(_F, "normal", 4, (3, 5), 8, (0, 1), "batch 4, non-square"),
    Row(_F, "normal", 2, (8, 8), 16, (0,), "batch 2, 8x8x16"),
    Row(_F, "normal", 4, (1, 1), 4, (0,), "1x1 spatial, batch 4, conv bias"),
    Row(_F, "normal", 4, (6, 6), 1, (0,), "features 1, batch 4"),
    Row(_F, "normal", 1, (7, 13), 2, (0,), "non-square, features 2"),
    Row(_F, "normal", 2, (16, 16), 8, (0,), "16x16, batch 2"),
    Row(_F, "normal", 4, (5, 7), 3, (0,), "odd feature count"),
    Row(_S, "lowamp", 1, (8, 8), 4, (0, 1), "init params, conv variance ~ epsilon: kernel "
        "init scale and epsilon show"),
    Row(_S, "lowamp", 1, (5, 7), 8, (0,), "init params, low amplitude, non-square"),
    Row(_S, "lowamp", 1, (4, 4), 16, (0,), "init params, low amplitude, features 16"),
    Row(_F, "lowamp", 2, (4, 4), 4, (0, 1), "low amplitude, conv bias at input scale: "
        "moderate kappa"),
    Row(_F, "lowamp", 1, (8, 8), 8, (0,), "low amplitude, batch 1"),
    Row(_X, "normal", 1, (1, 1), 16, (1,), "1 value per channel: the folded "
        "normalisation's rounding"),
    Row(_X, "lowamp", 2, (8, 8), 4, (0, 1), "batch variance ~ epsilon"),
    Row(_X, "lowamp", 4, (4, 4), 8, (0,), "batch variance ~ epsilon, batch 4"),
    Row(_X, "large", 2, (6, 6), 4, (0,), "amplitude 1e3"),
    Row(_X, "large", 1, (8, 8), 8, (0,), "amplitude 1e3, batch 1"),
    Row(_X, "offset", 2, (6, 6), 4, (0, 1), "large per-channel mean (high kappa)"),
    Row(_X, "offset", 1, (8, 8), 8, (0,), "large per-channel mean, batch 1"),
    Row(_X, "normal", 1, (1, 1), 8, (0,), "1 value per channel"),
    Row(_X, "normal", 2, (1, 1), 4, (0,), "2 values per channel"),
    Row(_X, "normal", 4, (1, 1), 16, (0,), "4 values per channel"),
    Row(_X, "normal", 1, (2, 2), 4, (0,), "4 values per channel, spatial"),
    Row(_X, "normal", 2, (2, 2), 2, (0,), "8 values per channel"),
    Row(_X, "normal", 4, (2, 2), 4, (0,), "16 values per channel"),
    Row(_X, "zeroinit", 2, (6, 6), 4, (0, 1), "zero-init residual: the block outputs x, "
        "whose exact zeros make the ReLU derivative at 0 decide x_bar"),
    Row(_X, "deadchan", 2, (6, 6), 4, (0, 1), "a dead channel: relu1 is exactly 0 there"),
    Row(_F, "normal", 8, (16, 16), 8, (0,), "2048 values per channel: the aggregate test "
        "sees errors no element shows"),
)

SMOKE_ROWS: tuple[Row, ...] = (
    Row(_S, "normal", 1, (4, 4), 4, (0,), "worked example"),
    Row(_S, "normal", 1, (3, 5), 2, (0,), "non-square"),
    Row(_F, "normal", 2, (4, 4), 4, (0,), "batch 2"),
    Row(_X, "offset", 2, (3, 3), 2, (0,), "high kappa"),
    Row(_X, "normal", 1, (1, 1), 4, (0,), "1 value per channel"),
)

BENCH_ROWS: tuple[Row, ...] = tuple(
    Row(_S, "normal", 1, (s, s), f, tuple(range(32)), "benchmark grid")
    for s in (4, 8, 16, 32)
    for f in (4, 16)
)

LARGE_ROWS: tuple[Row, ...] = tuple(
    Row(_S, "normal", 1, (s, s), f, tuple(range(4)), "large grid")
    for s in (7, 14, 28, 56)
    for f in (16, 32, 64)
) + (Row(_F, "normal", 4, (28, 28), 64, (0, 1), "large grid, batch 4"),)

# The four stages of ResNet-18 (and ResNet-34: the same block shapes) at a training batch
# of 32: the sizes people train and deploy. Its cost (README, "Real sizes") is in what it
# stores and in the float64 oracle and error models, not in the float32 forward.
RESNET18_BATCH = 32
RESNET18_ROWS: tuple[Row, ...] = tuple(
    Row(_F, "normal", RESNET18_BATCH, (s, s), f, (0,), f"ResNet-18 stage {i}: {s}x{s}x{f}")
    for i, (s, f) in enumerate(((56, 64), (28, 128), (14, 256), (7, 512)), start=1)
)

PRESETS: dict[str, tuple[Row, ...]] = {
    "default": DEFAULT_ROWS,
    "smoke": SMOKE_ROWS,
    "bench": BENCH_ROWS,
    "large": LARGE_ROWS,
    "resnet18": RESNET18_ROWS,
}


def preset_cases(name: str) -> list[Case]:
    if name not in PRESETS:
        raise GridError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return unique(c for row in PRESETS[name] for c in row.cases())


def axes_cases(*, families, inputs, batches, shapes, features, seeds) -> list[Case]:
    """The product of explicit axes; seeded cases keep batch 1 only (the problem's API).

    ``shapes`` holds (H, W) or (H, W, C) tuples; a C that differs from a feature count
    is refused (identity skip requires C == features).
    """
    cases = []
    for fam, inp, n, shape, f, s in itertools.product(
        families, inputs, batches, shapes, features, seeds
    ):
        if len(shape) == 3 and shape[2] != f:
            raise GridError(
                f"shape {'x'.join(map(str, shape))} has C={shape[2]} but features={f}; "
                "the basic block requires C == features"
            )
        if fam == "seeded" and n != 1:
            continue
        cases.append(Case(fam, inp, n, shape[0], shape[1], f, s))
    if not cases:
        raise GridError("the grid is empty: no combination of the given axes is a valid case "
                        "(seeded cases need --batch 1)")
    return unique(cases)


def group_cases(cases) -> list[list[Case]]:
    """Cases grouped by shape group, groups and cases in a deterministic order."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    return [sorted(g) for _, g in sorted(groups.items())]


def definition(preset: str | None, cases) -> dict:
    """The grid definition recorded in metadata."""
    if preset is not None:
        rows = [
            {"family": r.family, "inputs": r.inputs, "n": r.n, "shape": list(r.shape),
             "features": r.features, "seeds": list(r.seeds), "why": r.why}
            for r in PRESETS[preset]
        ]
        return {"rows": rows}
    return {"cases": [c.id for c in cases]}


def cases_from_definition(defn: dict) -> list[Case]:
    """The cases a recorded grid definition describes (for merge's gap check)."""
    if "cases" in defn:
        return [Case.from_id(i) for i in defn["cases"]]
    if "rows" in defn:
        return unique(c for r in defn["rows"] for c in Row(
            r["family"], r["inputs"], r["n"], tuple(r["shape"]), r["features"],
            tuple(r["seeds"]), r.get("why", "")).cases())
    raise GridError(f"grid definition has neither 'cases' nor 'rows': {sorted(defn)}")
