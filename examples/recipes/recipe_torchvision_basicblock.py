"""Recipe: torchvision's ``BasicBlock`` structure, with the conv bias the spec requires.

    resblock check --impl examples/recipes/recipe_torchvision_basicblock.py:forward

torchvision's ``torchvision.models.resnet.BasicBlock`` (``conv3x3`` -> ``bn1`` -> ReLU ->
``conv3x3`` -> ``bn2`` -> ``+ identity`` -> ReLU, module names ``conv1 bn1 conv2 bn2``) is
the spec's block except for four settings. This file restates the block against
``torch.nn`` (so it runs where torchvision does not install) with them changed:

* ``conv3x3(..., bias=False)`` in torchvision -> ``bias=True``: the spec's convs have a
  bias (it moves the running mean; the kit names ``missing_conv_bias`` otherwise).
* ``norm_layer=nn.BatchNorm2d`` -> ``partial(nn.BatchNorm2d, momentum=0.01)``: PyTorch's
  momentum weighs the new value; the spec keeps 0.99 of the old one.
* ``running_var`` is updated with the unbiased variance: convert the result with
  ``convert.spec_running_var``.
* One value per channel (batch 1 at 1x1): BatchNorm2d raises "Expected more than 1
  value per channel when training"; computed here from SPEC 3.4 (``_one_value``).

With torchvision installed, ``BasicBlock(F, F, norm_layer=...)`` and replacing
``block.conv1``/``block.conv2`` by ``nn.Conv2d(F, F, 3, padding=1, bias=True)`` gives the
same module; ``convert.to_torch_state_dict`` produces its ``state_dict`` keys.
"""

from functools import partial

import numpy as np
import torch
from torch import nn

from resblock.conformance import convert

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """torchvision's helper, with bias=True."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=True, dilation=dilation)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (expansion 1, no downsample) with biased convs."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, momentum=convert.torch_momentum())
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


def _one_value(x, params, batch_stats):
    """SPEC 3.4: with one value per channel each BatchNorm outputs its bias."""
    m = 0.99
    y = np.maximum(x + params["BatchNorm_1"]["bias"], 0).astype(np.float32)
    h = np.maximum(params["BatchNorm_0"]["bias"], 0)  # relu(bn1) at every position
    conv_outs = {"BatchNorm_0": _conv_at_1x1(x, params["Conv_0"]),
                 "BatchNorm_1": _conv_at_1x1(h[None, None, None, :], params["Conv_1"])}
    stats = {bn: {"mean": (m * batch_stats[bn]["mean"] + (1 - m) * v.reshape(-1))
                  .astype(np.float32),
                  "var": (m * batch_stats[bn]["var"]).astype(np.float32)}
             for bn, v in conv_outs.items()}
    return y, stats


def _conv_at_1x1(x, conv):
    # At 1x1 spatial with zero padding only the kernel's centre tap sees data.
    return x.reshape(1, -1) @ conv["kernel"][1, 1] + conv["bias"]


def forward(x, params, batch_stats):
    n, h, w, f = x.shape
    if n * h * w == 1:
        return _one_value(x, params, batch_stats)
    block = BasicBlock(f, f)
    sd = convert.to_torch_state_dict(params, batch_stats)
    block.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    block.train()
    with torch.no_grad():
        y = block(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()))
    new_stats = {}
    for flax_bn, bn in (("BatchNorm_0", block.bn1), ("BatchNorm_1", block.bn2)):
        new_stats[flax_bn] = {
            "mean": bn.running_mean.numpy().copy(),
            "var": convert.spec_running_var(batch_stats[flax_bn]["var"], bn.running_var,
                                            n * h * w)}
    return y.permute(0, 2, 3, 1).contiguous().numpy(), new_stats
