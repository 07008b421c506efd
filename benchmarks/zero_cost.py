"""An implementation that costs nothing: it returns the stored answers of the goldens.

Used by benchmarks/bench.py to measure the harness's own overhead.
"""

from __future__ import annotations

import os

import h5py

_ANSWERS: dict = {}


def _load():
    from resblock.golden.cli import default_goldens

    for path in os.environ.get("RESBLOCK_ZERO_COST_GOLDENS", "").split(os.pathsep) or []:
        if path:
            _read(path)
    if not _ANSWERS:
        for path in default_goldens():
            _read(path)


def _read(path):
    with h5py.File(path, "r") as f:
        for g in f["groups"].values():
            x = g["x"][()]
            y = g["y"][()]
            stats = {(layer, leaf): g[f"batch_stats_out/{layer}/{leaf}"][()]
                     for layer in ("BatchNorm_0", "BatchNorm_1") for leaf in ("mean", "var")}
            for i in range(x.shape[0]):
                _ANSWERS[x[i].tobytes()] = (y[i], {
                    layer: {leaf: stats[(layer, leaf)][i] for leaf in ("mean", "var")}
                    for layer in ("BatchNorm_0", "BatchNorm_1")})


def forward(x, params, batch_stats):
    if not _ANSWERS:
        _load()
    return _ANSWERS[x.tobytes()]
