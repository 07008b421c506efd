"""A program speaking the inference protocol, ``resblock-program-inference/1``
(spec/PROGRAM_PROTOCOL.md section 8), around the folded NumPy example.

    resblock check --api inference \
        --exec 'python3 examples/numpy_inference_program.py {input} {output}'

It reads ``cases.txt`` (rejecting another protocol), each case's raw little-endian
float32 inputs (the four statistics are the running statistics to normalise with) and
writes ``y.bin`` alone.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_folded_inference import infer  # noqa: E402

PARAMS = ("Conv_0/kernel", "Conv_0/bias", "BatchNorm_0/scale", "BatchNorm_0/bias",
          "Conv_1/kernel", "Conv_1/bias", "BatchNorm_1/scale", "BatchNorm_1/bias")
STATS = ("BatchNorm_0/mean", "BatchNorm_0/var", "BatchNorm_1/mean", "BatchNorm_1/var")


def read(path, shape):
    return np.fromfile(path, dtype="<f4").reshape(shape)


def main(inp: str, out: str) -> int:
    lines = Path(inp, "cases.txt").read_text().splitlines()
    if lines[0] != "resblock-program-inference/1":
        print(f"unsupported protocol {lines[0]!r}", file=sys.stderr)
        return 2
    for line in lines[1:]:
        d, n, h, w, c = line.split()
        n, h, w, c = int(n), int(h), int(w), int(c)
        src = Path(inp, d)
        params, stats = {}, {}
        for name in PARAMS:
            layer, leaf = name.split("/")
            shape = (3, 3, c, c) if leaf == "kernel" else (c,)
            params.setdefault(layer, {})[leaf] = read(src / f"{layer}.{leaf}.bin", shape)
        for name in STATS:
            layer, leaf = name.split("/")
            stats.setdefault(layer, {})[leaf] = read(src / f"{layer}.{leaf}.bin", (c,))
        y = infer(read(src / "x.bin", (n, h, w, c)), params, stats)
        np.asarray(y, "<f4").tofile(Path(out, d) / "y.bin")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
