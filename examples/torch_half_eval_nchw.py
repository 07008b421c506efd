"""The ResNet basic block deployed in float16 or bfloat16: PyTorch ``eval()`` mode, NCHW
(conforming examples of ``--api inference`` under the ``fp16`` / ``bf16`` profiles,
rejected under ``fp32``; spec section 12.4).

Three deployments of examples/torch_eval_nchw.py's ``BasicBlock``::

    resblock check --impl examples/torch_half_eval_nchw.py:infer_fp16_fused \
        --api inference --layout nchw --profile fp16
    resblock check --impl examples/torch_half_eval_nchw.py:infer_bf16 \
        --api inference --layout nchw --profile bf16
    resblock check --impl examples/torch_half_eval_nchw.py:infer_fp16 \
        --api inference --layout nchw --profile fp16

* ``infer_fp16_fused``: what the engines' float16 modes do (TensorRT, ONNX Runtime's and
  OpenVINO's FP16 conversion after their BatchNorm fusion): BatchNorm folded into each
  convolution in float32 (``torch.nn.utils.fusion.fuse_conv_bn_eval``), then the model
  and the input in float16 (``.half()``). Conforms on every committed case.
* ``infer_bf16``: ``model.bfloat16().eval()``, every weight, buffer and activation in
  bfloat16. Conforms on every committed case.
* ``infer_fp16``: ``model.half().eval()``, the running statistics in float16 too. A
  running variance beyond 65504 (the two ``stress-large`` cases hold about 4e6) becomes
  ``inf``, so the gain is 0 and the output wrong: rejected there, as the ``fp16`` profile
  says (it assumes every stored value fits the type), and conforming elsewhere.

PyTorch's CPU kernels for float16 and bfloat16 convolutions accumulate in float32. The
output is returned as float32 (the contract's type), after its float16 rounding.
This file imports only PyTorch and its sibling torch_eval_nchw.py.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

_spec = importlib.util.spec_from_file_location(
    "resblock_example_torch_eval_nchw", Path(__file__).with_name("torch_eval_nchw.py"))
_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_eval)


class FusedBlock(torch.nn.Module):
    """The block with each BatchNorm folded into the convolution before it."""

    def __init__(self, block):
        super().__init__()
        self.conv0 = fuse_conv_bn_eval(block.conv0, block.bn0)
        self.conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)

    def forward(self, x):
        return torch.relu(self.conv1(torch.relu(self.conv0(x))) + x)


def _run(model, x, dtype):
    with torch.no_grad():
        y = model.to(dtype)(torch.from_numpy(np.array(x, dtype=np.float32)).to(dtype))
    return y.float().numpy()


def _block(x, params, batch_stats):
    return _eval.load(_eval.BasicBlock(np.shape(x)[1]), params, batch_stats).eval()


def infer_fp16(x, params, batch_stats):
    return _run(_block(x, params, batch_stats), x, torch.float16)


def infer_bf16(x, params, batch_stats):
    return _run(_block(x, params, batch_stats), x, torch.bfloat16)


def infer_fp16_fused(x, params, batch_stats):
    return _run(FusedBlock(_block(x, params, batch_stats)), x, torch.float16)
