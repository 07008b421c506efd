"""The ResNet basic block in PyTorch, NCHW, stored in float16 or bfloat16 (a conforming
example under the ``fp16`` / ``bf16`` profiles, and a rejected one under ``fp32``).

What ``torch.autocast`` and the deployment engines' half-precision modes do, by hand so
that it runs the same on any device: the input, the parameters and the incoming running
statistics are rounded to the low type; each convolution multiplies low-type operands
and accumulates in float32; every activation a half-precision implementation keeps in
memory (the convolution outputs, the BatchNorm outputs, the residual sum, y) is rounded
to the low type; BatchNorm computes its statistics in float32 (as autocast runs it) and
stores the new running statistics in the low type. PyTorch's momentum and
running-variance conventions are handled by ``torch_nchw.batch_norm_train``::

    resblock check --impl examples/torch_half_nchw.py:forward_fp16 --layout nchw --profile fp16
    resblock check --impl examples/torch_half_nchw.py:forward_bf16 --layout nchw --profile bf16

Both are rejected under ``--profile fp32`` and named ``float16_block`` /
``bfloat16_block``. Float16's largest value is 65504: inputs whose activations or
statistics exceed it overflow (the ``fp16`` profile assumes they fit; SPEC.md 8.6).
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_spec = importlib.util.spec_from_file_location(
    "resblock_example_torch_nchw", Path(__file__).with_name("torch_nchw.py"))
_nchw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_nchw)


def _block(x, params, batch_stats, low_dtype):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _nchw._disable_tf32()

    def low(a):  # store in the low type; compute on it in float32
        return a.to(low_dtype).float()

    def t(a):
        return low(torch.tensor(np.asarray(a), dtype=torch.float32, device=device))

    with torch.no_grad():
        x = t(x)
        h = x
        new_stats = {}
        for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
            h = low(F.conv2d(h, t(params[conv]["kernel"]), t(params[conv]["bias"]),
                             padding=1))
            h, mean, var = _nchw.batch_norm_train(
                h, t(params[bn]["scale"]), t(params[bn]["bias"]),
                t(batch_stats[bn]["mean"]), t(batch_stats[bn]["var"]))
            h = low(h)
            new_stats[bn] = {"mean": low(mean).cpu(), "var": low(var).cpu()}
            if conv == "Conv_0":
                h = torch.relu(h)
        y = torch.relu(low(h + x))
    return y.cpu(), new_stats


def forward_fp16(x, params, batch_stats):
    return _block(x, params, batch_stats, torch.float16)


def forward_bf16(x, params, batch_stats):
    return _block(x, params, batch_stats, torch.bfloat16)
