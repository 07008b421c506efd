"""The floor for `resblock check`: read the goldens with h5py and compare with NumPy."""

from __future__ import annotations

import sys

import h5py
import numpy as np

worst = 0.0
for path in sys.argv[1:]:
    with h5py.File(path, "r") as f:
        for g in f["groups"].values():
            err = np.abs(g["y"][()].astype(np.float64) - g["oracle/y"][()])
            worst = max(worst, float(err.max()))
            for layer in ("BatchNorm_0", "BatchNorm_1"):
                for leaf in ("mean", "var"):
                    a = g[f"batch_stats_out/{layer}/{leaf}"][()].astype(np.float64)
                    b = g[f"oracle/batch_stats_out/{layer}/{leaf}"][()]
                    worst = max(worst, float(np.abs(a - b).max()))
print(f"max abs deviation {worst:.3g}")
