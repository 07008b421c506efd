"""A hostile implementation for test_secret_mode.py: it returns the answer stored in the
kit's golden files for the case whose input matches (a guess where none does)."""
import h5py
import numpy as np

from resblock.golden.cli import default_goldens


def _tree(g, prefix, i):
    return {layer: {leaf: np.asarray(g[f"{prefix}/{layer}/{leaf}"][i], np.float32)
                    for leaf in g[f"{prefix}/{layer}"]} for layer in g[prefix]}


def forward(x, params, batch_stats):
    x = np.asarray(x)
    for path in default_goldens():
        with h5py.File(path, "r") as f:
            for g in f["groups"].values():
                xs = g["x"]
                if xs.shape[1:] != x.shape:
                    continue
                for i in range(xs.shape[0]):
                    if np.array_equal(xs[i], x):
                        return (np.asarray(g["oracle/y"][i], np.float32),
                                _tree(g, "oracle/batch_stats_out", i))
    return np.zeros_like(x), batch_stats  # no stored answer: a guess


def backward(x, params, batch_stats, y_bar):
    x = np.asarray(x)
    for path in default_goldens():
        with h5py.File(path, "r") as f:
            for g in f["groups"].values():
                xs = g["x"]
                if xs.shape[1:] != x.shape:
                    continue
                for i in range(xs.shape[0]):
                    if np.array_equal(xs[i], x):
                        return (np.asarray(g["oracle/grad/x"][i], np.float32),
                                _tree(g, "oracle/grad/params", i))
    return np.zeros_like(x), {k: {n: np.zeros_like(v) for n, v in d.items()}
                              for k, d in params.items()}
