"""Recipe: the block with PyTorch's own layers, ``nn.Conv2d`` and ``nn.BatchNorm2d``.

    resblock check --impl examples/recipes/recipe_torch_batchnorm2d.py:forward

What differs from PyTorch's defaults, and what this recipe does about it:

* ``nn.BatchNorm2d(momentum=0.01)``: PyTorch's momentum weighs the NEW batch value
  (default 0.1); the spec keeps 0.99 of the old one (``convert.torch_momentum()``).
* ``eps=1e-5`` (PyTorch's default already; Keras' 1e-3 is wrong here).
* ``nn.Conv2d(padding=1, bias=True)``: PyTorch pads with 0 rows by default.
* ``model.train()``: BatchNorm normalises with the batch's statistics.
* ``running_var``: PyTorch updates it with the unbiased batch variance; the spec with
  the biased one. ``convert.spec_running_var(old, new, n)`` converts the updated value
  (n = N*H*W values per channel).
* One value per channel (N*H*W == 1): ``nn.BatchNorm2d`` raises "Expected more than 1
  value per channel when training". The spec defines that case (variance 0): each
  BatchNorm outputs its bias, running mean ``0.99*old + 0.01*value``, running var
  ``0.99*old`` (SPEC 3.4). :class:`SpecBatchNorm2d` computes it instead of calling
  PyTorch.
* TF32 off on GPUs (cuDNN allows it by default).

Parameters are loaded with ``resblock.conformance.convert.to_torch_state_dict`` (Flax
names and HWIO kernels -> ``conv1.weight`` OIHW, ``bn1.running_var``, ...).
"""

import numpy as np
import torch
from torch import nn

from resblock.conformance import convert

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


class SpecBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also accepts one value per channel in training mode."""

    def forward(self, x):
        n = x.numel() // x.shape[1]
        if not (self.training and n == 1):
            return super().forward(x)
        with torch.no_grad():  # variance 0: (x - mean) == 0, the output is the bias
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * x.reshape(-1))
            self.running_var.mul_(1 - m)
            self.num_batches_tracked += 1
        return self.bias.reshape(1, -1, 1, 1).expand_as(x) + 0 * x


class BasicBlock(nn.Module):
    def __init__(self, features):
        super().__init__()
        m = convert.torch_momentum()  # 0.01
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn1 = SpecBatchNorm2d(features, eps=1e-5, momentum=m)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn2 = SpecBatchNorm2d(features, eps=1e-5, momentum=m)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + x)


def forward(x, params, batch_stats):
    features = x.shape[-1]
    block = BasicBlock(features)
    sd = convert.to_torch_state_dict(params, batch_stats)  # writable NumPy copies
    block.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    block.train()
    x_nchw = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())  # inputs are read-only
    with torch.no_grad():
        y = block(x_nchw)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    new_stats = {}
    for flax_bn, bn in (("BatchNorm_0", block.bn1), ("BatchNorm_1", block.bn2)):
        var = bn.running_var.numpy()
        if n > 1:  # PyTorch's unbiased update -> the spec's biased one
            var = convert.spec_running_var(batch_stats[flax_bn]["var"], var, n)
        new_stats[flax_bn] = {"mean": bn.running_mean.numpy().copy(), "var": var}
    return y.permute(0, 2, 3, 1).contiguous().numpy(), new_stats
