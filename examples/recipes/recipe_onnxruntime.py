"""Recipe: ONNX Runtime running a PyTorch block exported in training mode.

    resblock check --impl examples/recipes/recipe_onnxruntime.py:forward

The PyTorch module (``nn.Conv2d(padding=1, bias=True)``, ``nn.BatchNorm2d(momentum=0.01)``)
is exported with ``torch.onnx.export(..., training=torch.onnx.TrainingMode.TRAINING)``, so
each ``BatchNormalization`` node has ``training_mode=1`` and normalises with the batch's
statistics; the exporter turns PyTorch's ``momentum=0.01`` into ONNX's ``momentum=0.99``
(ONNX, like Flax, weighs the old value). What this recipe adds and what differs:

* The updated statistics are the BatchNormalization node's 2nd and 3rd outputs
  (``running_mean``, ``running_var``); the export does not make them graph outputs, so
  :func:`build` adds them. The parameters and incoming statistics (initializers named
  ``conv1.weight``, ``bn1.running_var``, ... by ``convert.to_torch_state_dict``) are made
  graph inputs, so one session serves every case of a feature count.
* ONNX's running variance is updated with the **biased** batch variance already (the
  ONNX operator's definition), unlike PyTorch's own ``running_var``: do NOT apply the
  PyTorch conversion ``convert.spec_running_var`` to it (the kit names
  ``biased_running_var_converted`` otherwise).
* One value per channel is fine in ONNX Runtime (variance 0); exporting needs an input
  with more than one value per channel, since PyTorch refuses the other.
* Export with the TorchScript exporter (``dynamo=False``): it writes ``training_mode=1``
  and needs no ``onnxscript``.
"""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from resblock.conformance import convert


class BasicBlock(nn.Module):
    def __init__(self, features):
        super().__init__()
        m = convert.torch_momentum()  # 0.01
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(features, eps=1e-5, momentum=m)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(features, eps=1e-5, momentum=m)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + x)


_SESSIONS: dict = {}


def build(features: int) -> tuple[ort.InferenceSession, dict[str, str]]:
    """Export the block in training mode; expose running stats and initializers.

    Returns the session and a map from its output names to ``y``, ``bn1.running_mean``...
    """
    block = BasicBlock(features).train()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and buffer notes
        torch.onnx.export(block, (torch.zeros(2, features, 3, 3),), buf, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    model = onnx.load_from_string(buf.getvalue())
    g = model.graph
    out_names = {"y": "y"}
    for init in g.initializer:  # parameters and stats become per-call inputs
        g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                          list(init.dims)))
    for node in g.node:
        if node.op_type == "BatchNormalization":
            bn = node.input[3].rsplit(".", 1)[0]  # "bn1" from "bn1.running_mean"
            for out, leaf in zip(node.output[1:3], ("running_mean", "running_var"),
                                 strict=True):
                g.output.append(onnx.helper.make_tensor_value_info(
                    out, onnx.TensorProto.FLOAT, [features]))
                out_names[out] = f"{bn}.{leaf}"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no notes about initializers that are also inputs
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess, out_names


def forward(x, params, batch_stats):
    features = x.shape[-1]
    if features not in _SESSIONS:
        _SESSIONS[features] = build(features)
    sess, out_names = _SESSIONS[features]
    feeds = convert.to_torch_state_dict(params, batch_stats, num_batches_tracked=False)
    names = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    feeds["x"] = np.transpose(x, (0, 3, 1, 2)).copy()
    outs = sess.run(None, feeds)
    by_name = {out_names[o.name]: v for o, v in zip(sess.get_outputs(), outs, strict=True)}
    stats = {}
    for flax_bn, bn in (("BatchNorm_0", "bn1"), ("BatchNorm_1", "bn2")):
        stats[flax_bn] = {"mean": by_name[f"{bn}.running_mean"],
                          "var": by_name[f"{bn}.running_var"]}  # biased already
    return np.transpose(by_name["y"], (0, 2, 3, 1)), stats
