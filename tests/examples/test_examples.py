"""Tests of the example implementations in examples/ (loaded by path; not a package).

Each example's ``forward`` is compared with the Flax reference ``apply_block`` on seeded
random cases with non-init parameters (tests/conftest.py ``random_case``), including
one value per channel (N*H*W == 1), where PyTorch's BatchNorm2d would raise.
"""

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from resblock.spec.reference import apply_block

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OUT_TOL = 1e-4
STATS_TOL = 1e-5

# (seed, batch, height, width, features, scale)
CASES = [
    (0, 1, 1, 1, 1, 1.0),  # N*H*W == 1: variance 0, the output is relu(bn2.bias + x)
    (0, 2, 1, 1, 3, 1.0),  # 1x1 spatial
    (0, 1, 3, 5, 4, 1.0),  # batch 1, non-square
    (0, 2, 3, 5, 1, 1.0),  # one feature
    (1, 4, 6, 6, 8, 1.0),
    (0, 2, 4, 4, 3, 0.01),  # conv outputs with variance ~1e-4: epsilon placement matters
]
CASE_IDS = ["single", "1x1", "batch1", "features1", "4x6x6x8", "tiny_var"]


def load(name):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"resblock_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_REF: dict = {}


def reference(make_case, case):
    if case not in _REF:
        x, params, stats = make_case(*case)
        y, new = apply_block(x, params, stats)
        new = {b: {k: np.asarray(a) for k, a in d.items()} for b, d in new.items()}
        _REF[case] = (x, params, stats, np.asarray(y), new)
    return _REF[case]


def assert_matches(y, new, y_ref, stats_ref):
    assert y.shape == y_ref.shape
    assert np.max(np.abs(y - y_ref)) <= OUT_TOL
    assert set(new) == set(stats_ref)
    for b in stats_ref:
        for k in ("mean", "var"):
            assert np.max(np.abs(np.asarray(new[b][k]) - stats_ref[b][k])) <= STATS_TOL, (b, k)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("name", ["numpy_float64", "numpy_float32"])
def test_numpy_example_matches_flax(name, case, make_case):
    x, params, stats, y_ref, stats_ref = reference(make_case, case)
    y, new = load(name).forward(x, params, stats)
    assert y.dtype == np.float32 and new["BatchNorm_0"]["var"].dtype == np.float32
    assert_matches(y, new, y_ref, stats_ref)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jax_lax_example_matches_flax(case, make_case):
    x, params, stats, y_ref, stats_ref = reference(make_case, case)
    y, new = load("jax_lax").forward(x, params, stats)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_matches(y, new, y_ref, stats_ref)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_nchw_example_matches_flax(case, make_case):
    torch = pytest.importorskip("torch")
    x, params, stats, y_ref, stats_ref = reference(make_case, case)
    # What the kit does for --layout nchw: NHWC -> NCHW, HWIO -> OIHW, and back.
    params_oihw = {
        k: ({**v, "kernel": v["kernel"].transpose(3, 2, 0, 1)} if k.startswith("Conv") else v)
        for k, v in params.items()
    }
    y, new = load("torch_nchw").forward(x.transpose(0, 3, 1, 2), params_oihw, stats)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device.type == "cpu"
    assert isinstance(new["BatchNorm_1"]["var"], torch.Tensor)
    y = y.numpy().transpose(0, 2, 3, 1)
    new = {b: {k: a.numpy() for k, a in d.items()} for b, d in new.items()}
    assert_matches(y, new, y_ref, stats_ref)
    assert torch.backends.cudnn.allow_tf32 is False


def test_torch_running_var_is_converted_to_biased(make_case):
    # Without the (n - 1) / n rescaling the update would carry 0.01*var/(n-1) extra;
    # with n = 15 that is far above STATS_TOL, so this case shows the conversion works.
    torch = pytest.importorskip("torch")
    case = (0, 1, 3, 5, 4, 1.0)
    x, params, stats, _, stats_ref = reference(make_case, case)
    params_oihw = {
        k: ({**v, "kernel": v["kernel"].transpose(3, 2, 0, 1)} if k.startswith("Conv") else v)
        for k, v in params.items()
    }
    with torch.no_grad():
        h = torch.nn.functional.conv2d(
            torch.as_tensor(x.transpose(0, 3, 1, 2)),
            torch.as_tensor(params_oihw["Conv_0"]["kernel"]),
            torch.as_tensor(params_oihw["Conv_0"]["bias"]),
            padding=1,
        )
        plain = torch.nn.BatchNorm2d(4, eps=1e-5, momentum=0.01)
        plain.running_var.copy_(torch.as_tensor(stats["BatchNorm_0"]["var"]))
        plain(h)
    unconverted = plain.running_var.numpy()
    assert np.max(np.abs(unconverted - stats_ref["BatchNorm_0"]["var"])) > 10 * STATS_TOL
    _, new = load("torch_nchw").forward(x.transpose(0, 3, 1, 2), params_oihw, stats)
    var = new["BatchNorm_0"]["var"].numpy()
    assert np.max(np.abs(var - stats_ref["BatchNorm_0"]["var"])) <= STATS_TOL


@pytest.mark.parametrize("name", ["numpy_float64", "numpy_float32", "jax_lax", "torch_nchw"])
def test_example_is_standalone(name):
    tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots <= {"numpy", "torch", "jax"}, roots
    doc = ast.get_docstring(tree)
    assert f"resblock check --impl examples/{name}.py:forward" in doc
