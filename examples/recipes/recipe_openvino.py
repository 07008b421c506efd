"""Recipe: OpenVINO (CPU) running the ONNX file of a PyTorch ``eval()`` export.

    resblock check --api inference --layout nchw --impl examples/recipes/recipe_openvino.py:infer

The deployment pipeline, per case: the PyTorch block (``torch_eval_export.py``, with the
case's parameters and running statistics loaded) is exported with
``torch.onnx.export(..., training=TrainingMode.EVAL, dynamo=False)`` (which folds each
BatchNorm into its convolution), the ``.onnx`` file is read by ``openvino.Core`` and
compiled for the CPU device. What had to change from the defaults:

* ``INFERENCE_PRECISION_HINT: f32``. On a CPU with bfloat16 support (AVX512_BF16, AMX)
  OpenVINO's CPU plugin runs float32 models in **bfloat16** by default (the plugin's
  ``INFERENCE_PRECISION_HINT`` reads ``bfloat16`` there; ``f32`` elsewhere): the outputs
  are then off by ~1e-2 relative and fail the fp32 profile on most cases.
* Nothing else: OpenVINO's own fusions (BatchNorm into Conv, Conv with its bias and ReLU)
  stay on, and conform.

An ONNX file you already have is checked the same way, its weights replaced per case by
the kit: :func:`infer_file` with ``resblock.conformance.running.onnx_model``'s
``case_model`` (what ``resblock check --onnx`` feeds ONNX Runtime).

Run it in the worker process (the default), not with ``--in-process``: OpenVINO's CPU
plugin (2026.4.1) installs its own alternate signal stack on the main thread, and after
it has run there a signal (Ctrl-C, SIGTERM) can end the process with a kernel SIGSEGV
instead of the kit's clean stop (the kernel could not deliver the signal on that stack).
"""

import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
from torch_eval_export import export_eval, hwio  # examples/recipes/, next to this file

CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU plugin's default is bf16 on BF16 CPUs
_CORE = ov.Core()


def run_onnx(onnx_bytes: bytes, x: np.ndarray, config=None) -> np.ndarray:
    """Read the ONNX file with OpenVINO, compile it for the CPU, run it on NCHW ``x``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "block.onnx"
        path.write_bytes(onnx_bytes)
        model = _CORE.read_model(str(path))
    compiled = _CORE.compile_model(model, "CPU", CONFIG if config is None else config)
    out = compiled(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(out[compiled.output(0)], dtype=np.float32)


def infer(x, params, batch_stats):
    return run_onnx(export_eval(params, batch_stats, np.shape(x)[1]), x)


def infer_file(path: str):
    """An ``infer`` (--api inference, --layout nchw) for an ONNX file of your own: the
    kit's parameters put in its weights' places, then OpenVINO as above."""
    from resblock.conformance.running.onnx_model import case_model, read_block

    block = read_block(path, "inference", "nchw")

    def infer_path(x, params, batch_stats):
        return run_onnx(case_model(block, hwio(params), batch_stats).SerializeToString(), x)

    return infer_path
