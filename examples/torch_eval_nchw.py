"""The ResNet basic block as PyTorch deploys it: ``eval()`` mode, NCHW (a conforming
example of ``--api inference``, spec section 12).

Contract (layout "nchw")::

    infer(x, params, batch_stats) -> y

    x            float32 (N, C, H, W), C == F
    params       {"Conv_0": {"kernel": (F, C, 3, 3) OIHW, "bias": (F,)},
                  "BatchNorm_0": {"scale": (F,), "bias": (F,)}, "Conv_1": ..., "BatchNorm_1": ...}
    batch_stats  the running statistics: {"BatchNorm_0": {"mean": (F,), "var": (F,)}, ...}

    resblock check --impl examples/torch_eval_nchw.py:infer --api inference --layout nchw

Nothing differs from PyTorch's defaults here: in ``eval()`` mode ``BatchNorm2d``
normalises with ``running_mean`` and ``running_var`` (epsilon 1e-5, inside the square
root, as Flax) and updates nothing. Runs on the CPU, in float32 (on a GPU, turn TF32
off: ``torch.backends.cudnn.allow_tf32 = False``). This file imports only PyTorch.
"""

import numpy as np
import torch


class BasicBlock(torch.nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(features)
        self.conv1 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(features)

    def forward(self, x):
        y = torch.relu(self.bn0(self.conv0(x)))
        return torch.relu(self.bn1(self.conv1(y)) + x)


def load(block: BasicBlock, params, batch_stats) -> BasicBlock:
    """Copy the kit's parameters (OIHW kernels) and running statistics into ``block``."""
    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    with torch.no_grad():
        for i, (conv, bn) in enumerate(((block.conv0, block.bn0), (block.conv1, block.bn1))):
            conv.weight.copy_(t(params[f"Conv_{i}"]["kernel"]))
            conv.bias.copy_(t(params[f"Conv_{i}"]["bias"]))
            bn.weight.copy_(t(params[f"BatchNorm_{i}"]["scale"]))
            bn.bias.copy_(t(params[f"BatchNorm_{i}"]["bias"]))
            bn.running_mean.copy_(t(batch_stats[f"BatchNorm_{i}"]["mean"]))
            bn.running_var.copy_(t(batch_stats[f"BatchNorm_{i}"]["var"]))
    return block


def infer(x, params, batch_stats):
    block = load(BasicBlock(np.shape(x)[1]), params, batch_stats).eval()
    with torch.no_grad():
        return block(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()
