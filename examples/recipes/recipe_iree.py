"""Recipe: IREE (the ``llvm-cpu`` backend) compiling the ONNX file of a PyTorch ``eval()``
export, the compiler stack of the deployment recipes.

    resblock check --api inference --layout nchw --impl examples/recipes/recipe_iree.py:infer

The pipeline, per case (the weights are constants of the compiled program, as deployed):
the PyTorch block with the case's parameters and running statistics is exported as in
``recipe_openvino.py`` (TorchScript exporter, ``TrainingMode.EVAL``: BatchNorm folded
into the convolutions), imported with ``iree-import-onnx`` (the ``iree-base-compiler``
wheel, which needs ``onnx``), compiled with ``iree.compiler`` for ``llvm-cpu`` and run
by ``iree.runtime`` on the ``local-task`` driver. What had to change from the defaults:

* ``--iree-llvmcpu-target-cpu=host``: without a target CPU the compiler warns and builds
  for a generic x86-64 (correct, slower); nothing numeric changes.
* Nothing else: IREE's default float32 lowering (no fast-math reassociation of the
  convolutions' sums beyond what the float32 model admits) conforms.

Each case compiles anew (1-2 s): the committed set takes about a minute.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import iree.compiler as ireec
import iree.runtime as ireert
import numpy as np
from torch_eval_export import export_eval  # examples/recipes/, next to this file

COMPILE_ARGS = ["--iree-llvmcpu-target-cpu=host"]


def compile_onnx(onnx_bytes: bytes) -> bytes:
    """ONNX -> MLIR (``iree-import-onnx``) -> a ``llvm-cpu`` VM flatbuffer."""
    with tempfile.TemporaryDirectory() as d:
        src, mlir = Path(d) / "block.onnx", Path(d) / "block.mlir"
        src.write_bytes(onnx_bytes)
        subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(src),
                        "-o", str(mlir)], check=True, capture_output=True)
        return ireec.compile_file(str(mlir), target_backends=["llvm-cpu"],
                                  extra_args=COMPILE_ARGS)


def run_vmfb(vmfb: bytes, x: np.ndarray) -> np.ndarray:
    module = ireert.load_vm_flatbuffer(vmfb, driver="local-task")
    return np.asarray(module.main_graph(np.ascontiguousarray(x, dtype=np.float32)),
                      dtype=np.float32)


def infer(x, params, batch_stats):
    return run_vmfb(compile_onnx(export_eval(params, batch_stats, np.shape(x)[1])), x)
