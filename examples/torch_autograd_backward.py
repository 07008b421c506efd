"""The backward of the ResNet basic block by PyTorch autograd, NCHW (a conforming example).

Contract (``--api backward --layout nchw``)::

    backward(x, params, batch_stats, y_bar) -> (x_bar, params_bar)

    x, y_bar     float32 (N, C, H, W)          kernels OIHW (F, C, 3, 3) in params
    params_bar   nested like params (Flax names), kernels OIHW: the gradient of
                 sum(y * y_bar) with respect to x and every parameter

The forward is the block in training mode (``F.batch_norm(training=True)`` normalises
with the batch statistics and autograd differentiates through them); the running
statistics take no part in the VJP. PyTorch's ReLU derivative at exactly 0 is 0
(``threshold_backward`` passes the gradient where the input is > 0), the spec's and
JAX's convention. With one value per channel (N*H*W == 1) ``F.batch_norm`` refuses
training mode, so that case normalises by hand (the variance is exactly 0). Check it
with::

    resblock check --api backward --layout nchw --impl examples/torch_autograd_backward.py:backward

Runs on the CPU in float32 (no TF32: spec section 2). This file imports only PyTorch.
"""

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5


def _batch_norm(h, scale, bias):
    if h.shape[0] * h.shape[2] * h.shape[3] > 1:
        return F.batch_norm(h, None, None, scale, bias, training=True, eps=EPS)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (h - mean) / torch.sqrt(var + EPS) * scale[:, None, None] + bias[:, None, None]


def backward(x, params, batch_stats, y_bar):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    xt = torch.tensor(np.asarray(x), requires_grad=True)
    p = {layer: {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in leaves.items()}
         for layer, leaves in params.items()}
    h = F.conv2d(xt, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], padding=1)
    h = torch.relu(_batch_norm(h, p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"]))
    h = F.conv2d(h, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], padding=1)
    h = _batch_norm(h, p["BatchNorm_1"]["scale"], p["BatchNorm_1"]["bias"])
    y = torch.relu(h + xt)
    y.backward(torch.tensor(np.asarray(y_bar)))
    return xt.grad, {layer: {k: v.grad for k, v in leaves.items()} for layer, leaves in p.items()}
