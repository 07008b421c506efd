"""Shared by the deployment recipes (``recipe_openvino.py``, ``recipe_iree.py``): the
PyTorch block exported to ONNX the way a deployment pipeline does, holding one case's
parameters. Not a recipe itself (no ``recipe_`` prefix).

What differs from ``torch.onnx.export``'s defaults: ``dynamo=False`` (the TorchScript
exporter needs no ``onnxscript``); ``training=TrainingMode.EVAL`` is the default, and
folds each BatchNorm into the convolution before it (epsilon 1e-5, PyTorch's default, as
the spec's).
"""

import io
import warnings

import numpy as np
import torch

from resblock.conformance import convert


class BasicBlock(torch.nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(features)
        self.conv2 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(features)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def hwio(params):
    """The kit's NCHW-layout params (OIHW kernels) back in its own (HWIO) layout."""
    p = {k: dict(v) for k, v in params.items()}
    for conv in ("Conv_0", "Conv_1"):
        p[conv]["kernel"] = np.transpose(params[conv]["kernel"], (2, 3, 1, 0))
    return p


def export_eval(params, batch_stats, features: int) -> bytes:
    """The eval export (NCHW ``x`` -> ``y``) of the block holding the case's weights
    (``params`` as the kit hands them with ``--layout nchw``: OIHW kernels)."""
    block = BasicBlock(features)
    state = convert.to_torch_state_dict(hwio(params), batch_stats)
    block.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(block.eval(), (torch.zeros(1, features, 4, 4),), buf,
                          dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    return buf.getvalue()
