"""The ResNet basic block in PyTorch, NCHW layout (a conforming example).

Contract (layout "nchw", PyTorch's convention)::

    forward(x, params, batch_stats) -> (y, new_batch_stats)

    x       float32 (N, C, H, W), C == F        (NumPy array or tensor)
    params  {"Conv_0": {"kernel": (F, C, 3, 3) OIHW, "bias": (F,)},
             "BatchNorm_0": {"scale": (F,), "bias": (F,)},
             "Conv_1": {...}, "BatchNorm_1": {...}}
    batch_stats  {"BatchNorm_0": {"mean": (F,), "var": (F,)}, "BatchNorm_1": {...}}

    y is (N, F, H, W); results are float32 CPU torch tensors (the kit converts them).

With ``--layout nchw`` the kit transposes x (NHWC -> NCHW) and the kernels
(HWIO -> OIHW, ``transpose(3, 2, 0, 1)``) before the call and y back after it::

    resblock check --impl examples/torch_nchw.py:forward --layout nchw

Three PyTorch defaults differ from the spec and are handled here:

* momentum: PyTorch's ``momentum`` weighs the NEW batch value (default 0.1); the spec
  keeps 0.99 of the old value, i.e. ``BatchNorm2d(momentum=0.01)``.
* running_var: BatchNorm2d updates it with the UNBIASED batch variance; the spec uses
  the biased one, so the batch term is rescaled by (n - 1) / n after the call.
* one value per channel (N*H*W == 1): BatchNorm2d raises "Expected more than 1 value
  per channel when training"; the spec defines the result (variance 0, the output is
  the BN bias), so that case is computed with ``F.batch_norm`` from hand-made stats.

Runs on CUDA when available, else on the CPU. This file imports only PyTorch.
"""

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
MOMENTUM = 0.01  # PyTorch convention: weight of the NEW batch statistic (Flax: 0.99 old)


def _disable_tf32():
    # cuDNN convolutions default to TF32 on Ampere and newer GPUs
    # (torch.backends.cudnn.allow_tf32 is True by default): 10 mantissa bits give errors
    # near 1e-3, ten times the spec's tolerance. Matmuls are pinned too, for safety.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def batch_norm_train(y, scale, bias, mean, var):
    """Training-mode BatchNorm of NCHW ``y``; returns (normalised, new_mean, new_var)."""
    features = y.shape[1]
    n = y.numel() // features  # values per channel: N*H*W
    keep = 1.0 - MOMENTUM
    if n == 1:
        batch_mean = y.mean(dim=(0, 2, 3))
        batch_var = torch.zeros_like(batch_mean)  # biased variance of one value
        out = F.batch_norm(y, batch_mean, batch_var, scale, bias, training=False, eps=EPS)
        return out, keep * mean + MOMENTUM * batch_mean, keep * var + MOMENTUM * batch_var

    layer = torch.nn.BatchNorm2d(features, eps=EPS, momentum=MOMENTUM).to(y.device)
    layer.train()
    layer.weight.copy_(scale)
    layer.bias.copy_(bias)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)
    out = layer(y)
    # layer.running_var = 0.99 * var + 0.01 * var_unbiased; the spec wants
    # 0.99 * var + 0.01 * var_biased with var_biased = var_unbiased * (n - 1) / n.
    old = var.double()
    batch_term = layer.running_var.double() - keep * old
    new_var = (keep * old + batch_term * ((n - 1) / n)).float()
    return out, layer.running_mean.clone(), new_var


def forward(x, params, batch_stats):
    _disable_tf32()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def t(a):
        # Copy: the kit hands over read-only arrays, which torch cannot wrap in place.
        return torch.tensor(np.asarray(a), dtype=torch.float32, device=device)

    with torch.no_grad():
        x = t(x)
        h = x
        new_stats = {}
        for conv, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
            h = F.conv2d(h, t(params[conv]["kernel"]), t(params[conv]["bias"]), padding=1)
            h, mean, var = batch_norm_train(
                h,
                t(params[bn]["scale"]),
                t(params[bn]["bias"]),
                t(batch_stats[bn]["mean"]),
                t(batch_stats[bn]["var"]),
            )
            new_stats[bn] = {"mean": mean.cpu(), "var": var.cpu()}
            if conv == "Conv_0":
                h = torch.relu(h)
        y = torch.relu(h + x)
    return y.cpu(), new_stats
