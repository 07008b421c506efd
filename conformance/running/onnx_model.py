"""``resblock check --onnx model.onnx``: an exported model file run as deployed.

A deployer has a file with the weights baked in; a golden case fixes its own parameters.
The kit therefore reads the file's *graph* (its operators, their attributes, their
order) and runs it on every case with the case's parameters put in place of the file's
weights (SPEC section 12.7, DESIGN section 7):

* **Where each parameter goes** is found from the graph's structure, never from names:
  the block has exactly two ``Conv`` nodes (``Conv_0`` first in the graph's topological
  order); each is followed by a ``BatchNormalization`` node (an unfolded export: kernel,
  conv bias, scale, bias, mean and variance each go to their node's input slot) or by
  none (BatchNorm folded into the convolutions: the kit folds the case's parameters as
  SPEC 12.1's third form does, in float32, into each Conv's kernel and bias). Each slot is
  rewired to a fresh initializer of its own, so weights that an exporter deduplicated
  (a fresh model's BatchNorm scales equal its variances) or routed through ``Identity``
  nodes never alias, and weights given as graph inputs are mapped the same way.
* **One ONNX Runtime session per case** (CPU provider, default graph optimisations): the
  case's parameters are constants of the graph, as a deployed file's are, so ONNX
  Runtime's own fusions (BatchNorm into Conv, Conv with its activation) run as they do in
  deployment. Sessions on graph inputs would skip them: a different program.
* **x and y** are the one remaining graph input and the output; the layout is read from
  the graph (``x`` feeding a ``Conv`` directly is NCHW, ONNX's layout; through a
  ``Transpose`` with ``perm=[0, 3, 1, 2]`` it is NHWC). Declared shapes are relaxed to
  symbolic dimensions (rank kept), so the graph runs at every case's shape.

Everything wrong with the file as a whole (not two convolutions, a Conv without a bias,
a half-folded block, float16 weights, extra inputs, an eval export checked in training
mode) is an :class:`OnnxModelError` raised before any case runs; what ONNX Runtime
raises on one case is that case's error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from resblock.errors import HarnessError
from resblock.spec.constants import EPSILON

APIS = ("inference", "functional")
BN_LEAVES = ("scale", "bias", "mean", "var")  # BatchNormalization's input slots 1..4


class OnnxModelError(HarnessError):
    """An ONNX file cannot be checked as the block: its structure, inputs or types."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise OnnxModelError(f"--onnx needs onnx and onnxruntime ({e}): pip install onnx "
                             "onnxruntime (or, from a checkout, pip install '.[deploy]')") \
            from None
    return onnx, onnxruntime


@dataclass
class BlockGraph:
    """Where the block's tensors are in one ONNX file (found by :func:`read_block`)."""

    path: str
    model: object  # onnx.ModelProto, shapes relaxed, value_info cleared
    api: str  # "inference" or "functional"
    x: str
    y: str
    layout: str  # "nchw" or "nhwc", of x and y
    folded: bool
    training: bool  # BatchNormalization nodes with training_mode=1
    slots: dict = field(default_factory=dict)  # role -> (node index, input slot)
    stat_outputs: dict = field(default_factory=dict)  # "BatchNorm_i/mean" -> output name
    declared: tuple = ()  # x's declared shape in the file (ints or names)

    @property
    def form(self) -> str:
        if self.folded:
            return "BatchNorm folded into the convolutions"
        return f"BatchNormalization nodes, training_mode={int(self.training)}"


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def read_block(path: str, api: str | None = None, layout: str | None = None) -> BlockGraph:
    """Read ``path`` and find the block's x, y and parameter slots.

    Args:
      api: ``inference`` (y alone) or ``functional`` (y and the updated running
        statistics: a training-mode export); None: the file's mode (``functional`` where
        its BatchNormalization nodes have ``training_mode=1``).
      layout: the layout the user said x has, or None to take the graph's.

    Raises:
      OnnxModelError: the file is not readable as the block (every message says what
        was found, what the kit expected and what to do).
    """
    onnx, _ = _require_onnx()
    if api is not None and api not in APIS:
        raise OnnxModelError(f"--onnx checks --api inference (an eval export) or --api "
                             f"functional (a training-mode export), not --api {api}")
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 - protobuf and file errors alike
        raise OnnxModelError(f"--onnx {path}: not a readable ONNX file "
                             f"({type(e).__name__}: {e})") from None
    g = model.graph
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict = {}
    for i, n in enumerate(nodes):
        for s, name in enumerate(n.input):
            consumers.setdefault(name, []).append((i, s))
    where = f"--onnx {path}"
    found = ", ".join(f"{n.op_type}" for n in nodes) or "no nodes"
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if len(convs) != 2:
        raise OnnxModelError(
            f"{where}: {len(convs)} Conv nodes; the block has exactly two 3x3 convolutions "
            f"(graph: {found}). Export the basic block alone, not a whole network")
    slots, bns = {}, []
    for layer, ci in enumerate(convs):
        conv = nodes[ci]
        if len(conv.input) < 3 or not conv.input[2]:
            raise OnnxModelError(
                f"{where}: Conv_{layer} ({conv.name or 'unnamed'}) has no bias input; the "
                "block's convolutions have biases (SPEC 3.1). Export with bias=True "
                "(torchvision's conv3x3 has bias=False)")
        if _attr(conv, "group", 1) != 1 or list(_attr(conv, "kernel_shape", [3, 3])) != [3, 3]:
            raise OnnxModelError(
                f"{where}: Conv_{layer} has group={_attr(conv, 'group', 1)} and kernel_shape="
                f"{list(_attr(conv, 'kernel_shape', []))}; the block's are 1 and [3, 3]")
        slots[f"Conv_{layer}/kernel"] = (ci, 1)
        slots[f"Conv_{layer}/bias"] = (ci, 2)
        after = [nodes[j] for j, _ in consumers.get(conv.output[0], [])]
        bn = next((j for j, _ in consumers.get(conv.output[0], [])
                   if nodes[j].op_type == "BatchNormalization"), None)
        if bn is not None and len(after) != 1:
            raise OnnxModelError(f"{where}: Conv_{layer}'s output feeds {len(after)} nodes; "
                                 "the block's feeds its BatchNormalization alone")
        bns.append(bn)
    if (bns[0] is None) != (bns[1] is None):
        raise OnnxModelError(
            f"{where}: BatchNormalization follows Conv_{0 if bns[1] is None else 1} only; "
            "the kit reads a block with both BatchNorms as nodes or both folded into their "
            "convolutions")
    folded = bns[0] is None
    training = not folded and bool(_attr(nodes[bns[0]], "training_mode", 0))
    api = api or ("functional" if training else "inference")
    stat_outputs = {}
    if not folded:
        modes = [_attr(nodes[j], "training_mode", 0) for j in bns]
        if modes[0] != modes[1]:
            raise OnnxModelError(f"{where}: one BatchNormalization has training_mode=1, the "
                                 "other 0; export the whole block in one mode")
        for layer, j in enumerate(bns):
            for s, leaf in enumerate(BN_LEAVES, start=1):
                slots[f"BatchNorm_{layer}/{leaf}"] = (j, s)
            outs = list(nodes[j].output)
            if api == "functional":
                if len(outs) < 3 or not outs[1] or not outs[2]:
                    raise OnnxModelError(
                        f"{where}: BatchNorm_{layer}'s node does not output its running "
                        "mean and variance; --api functional compares them (export with "
                        "training=torch.onnx.TrainingMode.TRAINING)")
                stat_outputs[f"BatchNorm_{layer}/mean"] = outs[1]
                stat_outputs[f"BatchNorm_{layer}/var"] = outs[2]
    if api == "functional" and not training:
        raise OnnxModelError(
            f"{where}: an eval-mode export ({'BatchNorm folded into the convolutions' if folded else 'BatchNormalization with training_mode=0'}) "  # noqa: E501
            "normalises with running statistics and updates none: check it with --api "
            "inference (SPEC 12), or export in training mode for --api functional")
    for role, (j, s) in slots.items():  # every weight must be float32 where it is typed
        elem = _elem_type(model, nodes[j].input[s], producer, nodes)
        if elem not in (None, onnx.TensorProto.FLOAT):
            raise OnnxModelError(
                f"{where}: {role} ({nodes[j].input[s]!r}) is "
                f"{onnx.TensorProto.DataType.Name(elem).lower()}; this version checks "
                "float32 files (the float16/bfloat16 profiles are not in it yet): export in "
                "float32")
    x, xlayout = _find_x(model, nodes, producer, consumers, slots, convs[0], where)
    if layout is not None and layout != xlayout:
        how = ("feeds Conv_0 directly (ONNX's Conv is NCHW)" if xlayout == "nchw"
               else "goes through Transpose perm=[0, 3, 1, 2] before Conv_0")
        raise OnnxModelError(f"{where}: x ({x!r}) {how}, so it is "
                             f"{xlayout.upper()}, but --layout {layout} was given; drop "
                             f"--layout or pass --layout {xlayout}")
    rank_dims = _declared(model, x)
    if rank_dims is not None and len(rank_dims) != 4:
        raise OnnxModelError(f"{where}: x ({x!r}) has rank {len(rank_dims)} "
                             f"(declared {tuple(rank_dims)}); the block's x has rank 4 "
                             f"({'N, C, H, W' if xlayout == 'nchw' else 'N, H, W, C'})")
    elem = next(i.type.tensor_type.elem_type for i in g.input if i.name == x)
    if elem != onnx.TensorProto.FLOAT:
        raise OnnxModelError(f"{where}: x ({x!r}) is "
                             f"{onnx.TensorProto.DataType.Name(elem).lower()}; this version "
                             "checks float32 files: export in float32")
    wanted = set(stat_outputs.values())
    outs = [o.name for o in g.output if o.name not in wanted]
    if len(outs) != 1:
        raise OnnxModelError(f"{where}: the graph has outputs {outs}; the block has one, y "
                             "(remove the others from the export)")
    _relax(model, x, outs[0])
    return BlockGraph(path=str(path), model=model, api=api, x=x, y=outs[0], layout=xlayout,
                      folded=folded, training=training, slots=slots,
                      stat_outputs=stat_outputs,
                      declared=tuple(rank_dims) if rank_dims is not None else ())


def _elem_type(model, name, producer, nodes):
    """The element type of ``name`` where the file states it (through Identity/Cast-free
    chains of Identity nodes), or None."""
    seen = 0
    while name in producer and nodes[producer[name]].op_type == "Identity" and seen < 64:
        name, seen = nodes[producer[name]].input[0], seen + 1
    for t in model.graph.initializer:
        if t.name == name:
            return t.data_type
    for i in model.graph.input:
        if i.name == name:
            return i.type.tensor_type.elem_type
    return None


def _declared(model, name):
    for i in model.graph.input:
        if i.name == name and i.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in i.type.tensor_type.shape.dim]
    return None


def _find_x(model, nodes, producer, consumers, slots, conv0, where):
    """x: the graph input that reaches Conv_0's data slot (directly: NCHW; through a
    Transpose to NCHW: NHWC); every other graph input must be a mapped weight."""
    inits = {t.name for t in model.graph.initializer}
    weights = {nodes[j].input[s] for j, s in slots.values()}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    name, layout = nodes[conv0].input[0], "nchw"
    while name in producer:
        n = nodes[producer[name]]
        if n.op_type == "Transpose" and list(_attr(n, "perm", [])) == [0, 3, 1, 2]:
            layout = "nhwc" if layout == "nchw" else "nchw"
        elif n.op_type not in ("Identity", "Transpose"):
            raise OnnxModelError(f"{where}: Conv_0's input comes from a {n.op_type} node; "
                                 "the block's first convolution reads x (through a "
                                 "Transpose at most)")
        name = n.input[0]
    if name not in inputs:
        raise OnnxModelError(f"{where}: Conv_0 reads {name!r}, which is no graph input; "
                             f"the graph's inputs are {inputs}")
    extra = [i for i in inputs if i != name and i not in weights]
    if extra:
        raise OnnxModelError(f"{where}: graph inputs {extra} are neither x ({name!r}) nor "
                             "one of the block's weights; the block takes x alone (remove "
                             "them from the export)")
    return name, layout


def _fold(kernel_oihw, bias, scale, beta, mean, var):
    """SPEC 12.1's third form in float32: ``(k * g, (b - mean) * g + beta)``, each output
    channel's filter scaled (OIHW axis 0)."""
    f32 = np.float32
    g = (scale / np.sqrt(var + f32(EPSILON))).astype(f32)
    return ((kernel_oihw * g[:, None, None, None]).astype(f32),
            ((bias - mean) * g + beta).astype(f32))


def case_model(block: BlockGraph, params: dict, stats: dict):
    """A copy of the file's model with the case's parameters (Flax names, HWIO kernels)
    and running statistics as constants in every slot; unused weights pruned."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(block.model)
    g = m.graph
    values = {}
    for layer in (0, 1):
        k = np.transpose(np.asarray(params[f"Conv_{layer}"]["kernel"], np.float32),
                         (3, 2, 0, 1))  # HWIO -> OIHW
        b = np.asarray(params[f"Conv_{layer}"]["bias"], np.float32)
        bn, st = params[f"BatchNorm_{layer}"], stats[f"BatchNorm_{layer}"]
        leaves = {"scale": bn["scale"], "bias": bn["bias"], "mean": st["mean"],
                  "var": st["var"]}
        if block.folded:
            k, b = _fold(k, b, *(np.asarray(leaves[n], np.float32) for n in BN_LEAVES))
        else:
            for leaf in BN_LEAVES:
                values[f"BatchNorm_{layer}/{leaf}"] = np.asarray(leaves[leaf], np.float32)
        values[f"Conv_{layer}/kernel"], values[f"Conv_{layer}/bias"] = k, b
    for role, (j, s) in block.slots.items():
        name = f"resblock/{role}"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values[role]),
                                                     name))
        g.node[j].input[s] = name
    _prune(g, keep={block.x})
    return m


def _prune(g, keep):
    """Drop the nodes, initializers and graph inputs nothing reads any more."""
    outputs = {o.name for o in g.output}
    while True:
        used = {n for node in g.node for n in node.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {n for node in g.node for n in node.input} | outputs | keep
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    for i in [i for i in g.input if i.name not in used]:
        g.input.remove(i)


def _relax(model, block_x, y):
    """Symbolic dimensions for x and y (rank kept), no intermediate shapes: the graph
    runs at every case's shape."""
    g = model.graph
    for vi in list(g.input) + list(g.output):
        if vi.name in (block_x, y) and vi.type.tensor_type.HasField("shape"):
            for k, d in enumerate(vi.type.tensor_type.shape.dim):
                d.Clear()
                d.dim_param = f"resblock_{vi.name == y}_{k}"
    del g.value_info[:]


class OnnxInvoker:
    """The invoker of ``--onnx``: one ONNX Runtime session per case (see the module
    docstring); returns y in the file's layout (and, in functional mode, the updated
    running statistics) for the runner to judge."""

    def __init__(self, block: BlockGraph):
        onnx, _ = _require_onnx()
        self.block, self.api = block, block.api
        outputs = {o.name for o in block.model.graph.output}
        for name in block.stat_outputs.values():  # the updated statistics, made outputs
            if name not in outputs:
                block.model.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))

    def session(self, params, stats):
        _, ort = _require_onnx()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return ort.InferenceSession(case_model(self.block, params, stats).SerializeToString(),
                                    opts, providers=["CPUExecutionProvider"])

    def run(self, gcs):
        from resblock.conformance.running.invoke import Outcome, case_inputs, clean_text

        outs = []
        for gc in gcs:
            inputs = case_inputs(gc, self.api)
            x = inputs["x"] if self.block.layout == "nhwc" else \
                np.ascontiguousarray(np.transpose(inputs["x"], (0, 3, 1, 2)))
            t0 = time.perf_counter()
            try:
                sess = self.session(inputs["params"], inputs["stats"])
                names = [self.block.y] + list(self.block.stat_outputs.values())
                got = dict(zip(names, sess.run(names, {self.block.x: x}), strict=True))
            except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors are the case's
                outs.append(Outcome(error=clean_text(
                    f"ONNX Runtime raised {type(e).__name__}: {e}"),
                    seconds=time.perf_counter() - t0))
                continue
            seconds = time.perf_counter() - t0
            y = got[self.block.y]
            if self.api == "inference":
                outs.append(Outcome(result=y, seconds=seconds))
                continue
            new = {f"BatchNorm_{i}": {leaf: got[self.block.stat_outputs[f"BatchNorm_{i}/{leaf}"]]
                                      for leaf in ("mean", "var")} for i in (0, 1)}
            outs.append(Outcome(result=(y, new), seconds=seconds))
        return outs

    def close(self):
        pass

