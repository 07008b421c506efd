"""conformance/running/onnx_model.py: ``resblock check --onnx`` on real exported files.

Each file is written by ``examples/export_torch_onnx.py`` (PyTorch's TorchScript
exporter), the way a deployer exports: folded eval, BatchNorm kept, training mode, NHWC
with transposes, and the wrong exports the kit must reject and name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

for _m in ("torch", "onnx", "onnxruntime"):
    if importlib.util.find_spec(_m) is None and os.environ.get("RESBLOCK_REQUIRE_DEPLOY"):
        raise ImportError(f"{_m} is not installed and RESBLOCK_REQUIRE_DEPLOY is set (.ci/run)"
                          ": pip install -c constraints.txt -e '.[deploy]'")
    pytest.importorskip(_m, reason=f"{_m} is not installed (pip install '.[deploy]')")

import onnx  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from resblock.cli import cli  # noqa: E402
from resblock.conformance.judging.runner import CheckConfig, run_check  # noqa: E402
from resblock.conformance.running.onnx_model import (  # noqa: E402
    OnnxInvoker,
    OnnxModelError,
    read_block,
)
from resblock.golden.manifest import committed_paths  # noqa: E402

# The TorchScript exporter's deprecation notices: the files are what a deployer exports.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:It is recommended that constant folding")]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "export_torch_onnx.py"
_spec = importlib.util.spec_from_file_location("resblock_export_torch_onnx", EXAMPLE)
export_torch_onnx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_torch_onnx)


def _export(tmp_path, name="block.onnx", block=None, features=4, **kw):
    path = tmp_path / name
    export_torch_onnx.export(block or export_torch_onnx.trained_block(features), str(path),
                             features, **kw)
    return str(path)


def _check(path, api=None, layout=None, keyword=None):
    block = read_block(path, api, layout)
    cfg = CheckConfig(target=path, api=block.api, layout=block.layout, keyword=keyword,
                      onnx=True)
    return block, run_check(cfg, OnnxInvoker(block), committed_paths())


def _statuses(run):
    return {r.status for r in run.results}


@pytest.mark.parametrize("keep", [False, True], ids=["folded", "batchnorm-nodes"])
def test_an_eval_export_conforms_on_every_committed_case(tmp_path, keep):
    block, run = _check(_export(tmp_path, keep_batchnorm=keep))
    assert (block.api, block.layout, block.folded, block.training) == \
        ("inference", "nchw", not keep, False)
    assert len(run.results) == 59 and _statuses(run) == {"pass"}
    assert max(r.worst_score for r in run.results) < 0.5


def test_a_training_export_conforms_in_functional_mode(tmp_path):
    block, run = _check(_export(tmp_path, training=True))
    assert block.api == "functional" and block.training
    assert set(block.stat_outputs) == {"BatchNorm_0/mean", "BatchNorm_0/var",
                                       "BatchNorm_1/mean", "BatchNorm_1/var"}
    assert len(run.results) == 59 and _statuses(run) == {"pass"}


def test_a_training_export_checked_as_inference_is_named_batch_stats(tmp_path):
    _, run = _check(_export(tmp_path, training=True), api="inference")
    assert not run.conforms
    assert run.pitfalls.most_common(1)[0][0] == "inf_batch_stats"


def test_an_export_with_epsilon_1e3_is_rejected_and_named(tmp_path):
    block = export_torch_onnx.trained_block(4, eps=1e-3)  # Keras' default
    path = _export(tmp_path, block=block, keep_batchnorm=True)
    eps = [a.f for n in onnx.load(path).graph.node if n.op_type == "BatchNormalization"
           for a in n.attribute if a.name == "epsilon"]
    assert np.allclose(eps, 1e-3)
    _, run = _check(path)
    assert not run.conforms and run.count("fail") >= 30
    assert run.pitfalls.most_common(1)[0][0] == "inf_epsilon_1e3"


def test_weights_the_exporter_deduplicated_do_not_alias(tmp_path):
    # A fresh model's BatchNorm scales equal its variances (1) and its biases its means
    # (0): the exporter keeps one tensor and routes the others through Identity nodes.
    fresh = export_torch_onnx.BasicBlock(4)
    path = _export(tmp_path, block=fresh, keep_batchnorm=True)
    assert "Identity" in {n.op_type for n in onnx.load(path).graph.node}
    _, run = _check(path, keyword="functional")
    assert len(run.results) == 16 and _statuses(run) == {"pass"}


class Nhwc(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_an_nhwc_graph_is_read_as_nhwc_and_conforms(tmp_path):
    path = str(tmp_path / "nhwc.onnx")
    torch.onnx.export(Nhwc(export_torch_onnx.trained_block(4).eval()),
                      (torch.zeros(1, 8, 8, 4),), path, dynamo=False,
                      input_names=["x"], output_names=["y"])
    block, run = _check(path, keyword="functional")
    assert block.layout == "nhwc"
    assert _statuses(run) == {"pass"}
    with pytest.raises(OnnxModelError, match="so it is NHWC, but --layout nchw"):
        read_block(path, layout="nchw")


# --- files the kit refuses, each with what was found and what to do -------------------

class ThreeConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = export_torch_onnx.BasicBlock(4)
        self.head = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.head(self.block(x))


class NoBias(export_torch_onnx.BasicBlock):
    def __init__(self):
        super().__init__(4)
        self.conv0 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = export_torch_onnx.BasicBlock(4)

    def forward(self, x, t):
        return self.block(x) * t


def _torch_file(tmp_path, module, args, names=("x",), half=False):
    path = str(tmp_path / "m.onnx")
    module = module.eval()
    if half:
        module, args = module.half(), tuple(a.half() for a in args)
    torch.onnx.export(module, args, path, dynamo=False, input_names=list(names),
                      output_names=["y"], training=torch.onnx.TrainingMode.PRESERVE)
    return path


X = torch.zeros(1, 4, 4, 4)


@pytest.mark.parametrize("module, args, names, half, fragment", [
    (ThreeConvs, (X,), ("x",), False, "3 Conv nodes; the block has exactly two"),
    (NoBias, (X,), ("x",), False, "Conv_0 (/conv0/Conv) has no bias input"),
    (TwoInputs, (X, torch.ones(1)), ("x", "t"), False, "graph inputs ['t'] are neither x"),
    (lambda: export_torch_onnx.BasicBlock(4), (X,), ("x",), True,
     "is float16; this version checks float32 files"),
], ids=["three-convs", "no-conv-bias", "extra-input", "float16"])
def test_a_file_that_is_not_the_block_is_refused(tmp_path, module, args, names, half,
                                                 fragment):
    path = _torch_file(tmp_path, module(), args, names, half)
    with pytest.raises(OnnxModelError, match=fragment.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):
        read_block(path)


def test_an_eval_export_checked_in_functional_mode_is_refused(tmp_path):
    with pytest.raises(OnnxModelError, match="an eval-mode export .* check it with --api "
                                             "inference"):
        read_block(_export(tmp_path), api="functional")


def test_an_unreadable_file_is_refused(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00not a model")
    with pytest.raises(OnnxModelError, match="not a readable ONNX file"):
        read_block(str(p))


# --- the command ------------------------------------------------------------------------

def test_cli_checks_a_file_in_its_own_mode_and_reports_the_repro(tmp_path):
    path = _export(tmp_path, keep_batchnorm=True)
    report = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["check", "--onnx", path, "-q", "-k", "functional",
                                 "--json-report", str(report)])
    assert r.exit_code == 0, r.output
    assert "x 'x' (NCHW), y 'y', BatchNormalization nodes, training_mode=0" in r.output
    assert "(api inference, layout nchw" in r.output
    assert "CONFORMS: 16 passed" in r.output


def test_cli_names_a_wrong_export_and_exits_1(tmp_path):
    path = _export(tmp_path, training=True)
    r = CliRunner().invoke(cli, ["check", "--onnx", path, "--api", "inference", "-q",
                                 "-k", "functional"])
    assert r.exit_code == 1, r.output
    assert "inf_batch_stats" in r.output
    assert f"repro: resblock check --onnx {path} --api inference" in r.output


@pytest.mark.parametrize("args, fragment", [
    (["--impl", "x.py:f"], "give exactly one of --impl TARGET, --exec"),
    (["--api", "backward"], "--onnx runs an exported file in ONNX Runtime"),
    (["--timeout", "3"], "drop --api seeded/backward, --secret, --in-process and --timeout"),
])
def test_cli_refuses_options_that_do_not_apply(tmp_path, args, fragment):
    r = CliRunner().invoke(cli, ["check", "--onnx", str(tmp_path / "m.onnx"), *args])
    assert r.exit_code == 2 and fragment in r.output, r.output


def test_cli_layout_mismatch_is_a_harness_error(tmp_path):
    r = CliRunner().invoke(cli, ["check", "--onnx", _export(tmp_path), "--layout", "nhwc"])
    assert r.exit_code == 2
    assert "feeds Conv_0 directly (ONNX's Conv is NCHW), so it is NCHW, but --layout " \
           "nhwc was given" in r.output
