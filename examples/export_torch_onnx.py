"""Export the PyTorch basic block to an ONNX file, as a deployment pipeline does, for
``resblock check --onnx`` (spec section 12.7)::

    python examples/export_torch_onnx.py block.onnx                    # eval export
    resblock check --onnx block.onnx --api inference
    python examples/export_torch_onnx.py block.onnx --keep-batchnorm   # BN nodes kept
    python examples/export_torch_onnx.py block.onnx --training         # training mode
    resblock check --onnx block.onnx --api functional

What differs from ``torch.onnx.export``'s defaults, and why:

* ``dynamo=False``: the TorchScript exporter needs no ``onnxscript`` (torch 2.9+ makes
  the dynamo exporter the default) and writes ``training_mode`` as this script asks.
* The default eval export (``training=TrainingMode.EVAL``) **folds each BatchNorm into
  the convolution before it**: the file holds the folded kernels and biases and no
  BatchNormalization node. The kit then folds each case's parameters itself, so the
  file's own fold (its epsilon) is not checked; ``--keep-batchnorm`` exports with
  ``TrainingMode.PRESERVE`` from ``eval()``, which keeps the BatchNormalization nodes
  (``training_mode=0``, the epsilon as an attribute) for ONNX Runtime to fold when it
  loads the file, and the epsilon is checked.
* ``--training`` exports ``TrainingMode.TRAINING`` with ``momentum=0.01`` (the exporter
  writes ONNX's ``momentum=0.99``) for ``--api functional``.
* ``dynamic_axes`` on N, H and W: not needed by the kit (it runs the graph at each case's
  shape), but what a deployer serving several sizes writes.

The weights in the file are whatever the model holds (here a fresh model's, with
running statistics drawn as if trained): the kit replaces them with each case's.
"""

from __future__ import annotations

import argparse
import warnings

import torch


class BasicBlock(torch.nn.Module):
    """The block of ``examples/torch_eval_nchw.py``: conv biases, BatchNorm epsilon 1e-5."""

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.01):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn0 = torch.nn.BatchNorm2d(features, eps=eps, momentum=momentum)
        self.conv1 = torch.nn.Conv2d(features, features, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(features, eps=eps, momentum=momentum)

    def forward(self, x):
        y = torch.relu(self.bn0(self.conv0(x)))
        return torch.relu(self.bn1(self.conv1(y)) + x)


def export(block: torch.nn.Module, path, features: int, keep_batchnorm: bool = False,
           training: bool = False) -> None:
    """Write ``block`` to ``path`` as ONNX (NCHW input ``x``, output ``y``)."""
    mode = (torch.onnx.TrainingMode.TRAINING if training else
            torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else
            torch.onnx.TrainingMode.EVAL)
    block.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(block, (torch.randn(2, features, 8, 8),), path, dynamo=False,
                          training=mode, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"},
                                        "y": {0: "n", 2: "h", 3: "w"}})


def trained_block(features: int, **kw) -> BasicBlock:
    """A block whose running statistics look trained (not 0 and 1)."""
    torch.manual_seed(0)
    block = BasicBlock(features, **kw)
    with torch.no_grad():
        for bn in (block.bn0, block.bn1):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return block


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--keep-batchnorm", action="store_true",
                    help="keep BatchNormalization nodes (TrainingMode.PRESERVE from eval())")
    ap.add_argument("--training", action="store_true",
                    help="a training-mode export, for --api functional")
    a = ap.parse_args(argv)
    export(trained_block(a.features), a.path, a.features, a.keep_batchnorm, a.training)
    print(f"wrote {a.path}")


if __name__ == "__main__":
    main()
