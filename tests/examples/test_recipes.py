"""Each recipe in examples/recipes/ conforms on a slice of the committed golden set.

A recipe whose library is not installed is skipped with the package to install
(``pip install -e ".[recipes]"`` installs them all). The slice holds the three cases with
one value per channel (where PyTorch's BatchNorm2d raises), a batch-2 functional case, a
low-amplitude and an offset case: cheap, and the cases where library defaults bite.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.running.invoke import InProcess
from resblock.golden.manifest import committed_paths

RECIPES_DIR = Path(__file__).resolve().parents[2] / "examples" / "recipes"
KEYWORD = ("n1-1x1 or functional-normal-n2-4x4-f4-s0 or stress-lowamp-n2-8x8-f4-s0 "
           "or stress-offset-n2-6x6-f4-s0")
# JAX libraries compile every op per new shape (10-20 s for the slice above): 3 shapes.
JAX_KEYWORD = ("seeded-normal-n1-1x1-f4 or functional-normal-n2-4x4-f4-s0 "
               "or stress-lowamp-n2-8x8-f4-s0")

# recipe -> (modules it imports, the pip package to install, the -k slice)
RECIPES = {
    "recipe_torch_batchnorm2d": (("torch",), "torch", KEYWORD),
    "recipe_torchvision_basicblock": (("torch",), "torch", KEYWORD),
    "recipe_keras": (("keras", "jax"), "keras", JAX_KEYWORD),
    "recipe_flax_nnx": (("flax.nnx",), "flax", JAX_KEYWORD),
    "recipe_equinox": (("equinox",), "equinox", JAX_KEYWORD),
    "recipe_haiku": (("haiku",), "dm-haiku", JAX_KEYWORD),
    "recipe_onnxruntime": (("torch", "onnx", "onnxruntime"), "onnxruntime onnx torch",
                           KEYWORD),
}


# Deployment recipes: inference ports (--api inference --layout nchw, infer) of a PyTorch
# eval export run by an engine. recipe -> (modules, the pip package, the -k slice).
# IREE compiles each case (~2 s): 3 cases.
IREE_KEYWORD = ("stress-normal-n1-1x1-f8-s0 or functional-normal-n2-4x4-f4-s0 "
                "or stress-offset-n2-6x6-f4-s0")
DEPLOY_RECIPES = {
    "recipe_openvino": (("torch", "onnx", "openvino"), "openvino", KEYWORD),
    "recipe_iree": (("torch", "onnx", "iree.compiler", "iree.runtime"),
                    "iree-base-compiler iree-base-runtime", IREE_KEYWORD),
}
DEPLOY_MODULES = {"onnx", "onnxruntime", "openvino", "iree"}


def _require(modules, package):
    for m in modules:
        if importlib.util.find_spec(m.split(".")[0]) is None:
            if os.environ.get("RESBLOCK_REQUIRE_DEPLOY") and m.split(".")[0] in \
                    DEPLOY_MODULES:  # set by .ci/run: the deployment recipes must run
                pytest.fail(f"{m} is not installed and RESBLOCK_REQUIRE_DEPLOY is set: "
                            f"pip install -c constraints.txt -e '.[deploy]'")
            pytest.skip(f"{m} is not installed (pip install {package}, or the [recipes] extra)")
        if "." in m:
            pytest.importorskip(m, reason=f"{m} is not available (pip install {package})")


def _load(name):
    if str(RECIPES_DIR) not in sys.path:  # torch_eval_export.py, shared by two recipes
        sys.path.append(str(RECIPES_DIR))
    spec = importlib.util.spec_from_file_location(f"resblock_recipe_{name}",
                                                  RECIPES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recipe_is_listed():
    assert {p.stem for p in RECIPES_DIR.glob("recipe_*.py")} == \
        set(RECIPES) | set(DEPLOY_RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_conforms_on_committed_goldens(name):
    modules, package, keyword = RECIPES[name]
    _require(modules, package)
    fn = _load(name).forward
    cfg = CheckConfig(target=f"examples/recipes/{name}.py:forward", keyword=keyword)
    run = run_check(cfg, InProcess(fn, cfg.api, cfg.layout), committed_paths())
    assert len(run.results) >= 4
    bad = [(r.id, r.status, r.message) for r in run.results if r.status != "pass"]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(DEPLOY_RECIPES))
def test_deployment_recipe_conforms_on_committed_inference_cases(name, tmp_path):
    """Checked as a deployer runs it, through ``resblock check`` (its own process)."""
    modules, package, keyword = DEPLOY_RECIPES[name]
    _require(modules, package)
    rc, report = _check_in_child(f"examples/recipes/{name}.py:infer", keyword, tmp_path)
    bad = [(c["id"], c["status"]) for c in report["cases"] if c["status"] != "pass"]
    assert rc == 0 and not bad and len(report["cases"]) >= 3, (rc, bad)
    assert max(c["worst_score"] for c in report["cases"]) < 0.5


@pytest.mark.parametrize("name", sorted(RECIPES) + sorted(DEPLOY_RECIPES))
def test_recipe_documents_its_command_and_does_not_shadow_its_library(name):
    doc = (RECIPES_DIR / f"{name}.py").read_text("utf-8")
    command = (f"resblock check --api inference --layout nchw --impl examples/recipes/"
               f"{name}.py:infer" if name in DEPLOY_RECIPES else
               f"resblock check --impl examples/recipes/{name}.py:forward")
    assert command in doc
    assert "What had to change from the defaults" in doc or name in RECIPES
    imported = set(re.findall(r"^(?:import|from) (\w+)", doc, flags=re.M))
    assert name not in imported  # a file named like a package shadows it (keras.py)


# --- each library's default, kept, is named by the checker -----------------------------

STATS_SLICE = "functional-normal-n2-4x4-f4-s0 or stress-normal-n2-2x2-f2-s0"


def _named(fn, keyword):
    cfg = CheckConfig(target="t", keyword=keyword)
    run = run_check(cfg, InProcess(fn, cfg.api, cfg.layout), committed_paths())
    assert not run.conforms
    assert run.pitfalls, [(r.id, r.status, r.message) for r in run.results]
    return run.pitfalls.most_common(1)[0][0], run


def test_plain_batchnorm2d_at_one_value_per_channel_is_named():
    _require(("torch",), "torch")
    import torch

    module = _load("recipe_torch_batchnorm2d")
    module.SpecBatchNorm2d = torch.nn.BatchNorm2d  # PyTorch's own layer, which raises
    name, run = _named(module.forward, "n1-1x1")
    assert name == "torch_one_value_per_channel"
    assert all(r.status == "error" and "Expected more than 1 value per channel" in r.message
               for r in run.results)


def test_equinox_default_ema_mode_is_named():
    _require(("equinox",), "equinox")
    module = _load("recipe_equinox")
    module.BN_MODE = "ema"
    assert _named(module.forward, STATS_SLICE)[0] == "equinox_ema_mode"


def test_haiku_zero_debias_from_counter_zero_is_named():
    _require(("haiku",), "dm-haiku")
    module = _load("recipe_haiku")
    module.SETTLED_COUNTER = 0
    assert _named(module.forward, STATS_SLICE)[0] == "haiku_zero_debias"


def test_torch_conversion_applied_to_onnxruntime_running_var_is_named():
    _require(("torch", "onnx", "onnxruntime"), "onnxruntime onnx")
    from resblock.conformance import convert

    module = _load("recipe_onnxruntime")

    def converted_twice(x, params, batch_stats):
        y, stats = module.forward(x, params, batch_stats)
        n = x.shape[0] * x.shape[1] * x.shape[2]
        for bn, s in stats.items():
            s["var"] = convert.spec_running_var(batch_stats[bn]["var"], s["var"], n)
        return y, stats

    assert _named(converted_twice, STATS_SLICE)[0] == "biased_running_var_converted"


# OpenVINO runs in a child process in these tests, never in pytest's own: its CPU plugin
# (2026.4.1) installs its own alternate signal stack on the main thread, and a signal
# delivered to the process later (tests/test_interrupts.py sends itself SIGTERM) was
# then a kernel SIGSEGV (si_code SI_KERNEL; CI exited 139). ``resblock check`` runs an --impl in a
# worker process by default, so a deployer's checker is not exposed to it.
def _check_in_child(target, keyword, tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "resblock", "check", "--api", "inference", "--layout",
         "nchw", "--impl", target, "-k", keyword, "--json-report", str(report), "-q",
         "--no-diagnose"], capture_output=True, text=True, timeout=600)
    assert report.exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(report.read_text("utf-8"))


def _openvino_wrapper(tmp_path, body):
    """A file whose ``infer`` is the OpenVINO recipe's, changed by ``body``."""
    path = tmp_path / "openvino_variant.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(RECIPES_DIR)!r})\n"
                    f"import recipe_openvino as recipe\n{body}\n", "utf-8")
    return f"{path}:infer"


def test_openvino_default_precision_is_rejected_on_a_bfloat16_cpu(tmp_path):
    _require(("torch", "onnx", "openvino"), "openvino")
    hint = subprocess.run(
        [sys.executable, "-c", "import openvino as ov; "
         "print(ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT'))"],
        capture_output=True, text=True, timeout=300, check=True).stdout.strip()
    if hint == "f32":
        pytest.skip("this CPU runs OpenVINO in float32 by default (no bfloat16 support)")
    # OpenVINO's default: bfloat16 on this CPU
    target = _openvino_wrapper(tmp_path, "recipe.CONFIG = {}\ninfer = recipe.infer")
    rc, report = _check_in_child(target, KEYWORD, tmp_path)
    assert rc == 1 and sum(c["status"] == "fail" for c in report["cases"]) >= 4


def test_openvino_reads_an_exported_file_with_the_kits_weights(tmp_path):
    _require(("torch", "onnx", "openvino"), "openvino")
    path = tmp_path / "block.onnx"
    body = (f"{inspect.getsource(_fresh_case)}\n"
            f"open({str(path)!r}, 'wb').write(recipe.export_eval(*_fresh_case(4), 4))\n"
            f"infer = recipe.infer_file({str(path)!r})")
    rc, report = _check_in_child(_openvino_wrapper(tmp_path, body), KEYWORD, tmp_path)
    assert path.exists() and rc == 0
    assert {c["status"] for c in report["cases"]} == {"pass"} and len(report["cases"]) >= 4


def _fresh_case(f):
    import numpy as np

    rng = np.random.default_rng(0)
    params = {f"Conv_{i}": {"kernel": rng.normal(size=(f, f, 3, 3)).astype(np.float32),
                            "bias": rng.normal(size=f).astype(np.float32)} for i in (0, 1)}
    params |= {f"BatchNorm_{i}": {"scale": np.ones(f, np.float32),
                                  "bias": np.zeros(f, np.float32)} for i in (0, 1)}
    stats = {f"BatchNorm_{i}": {"mean": np.zeros(f, np.float32),
                                "var": np.ones(f, np.float32)} for i in (0, 1)}
    return params, stats
