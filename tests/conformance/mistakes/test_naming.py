"""The diagnosis names mistakes made by ports it has never seen.

Every other wrong implementation in the suite is the diagnoser's own NumPy twin, which
proves naming only against itself. Here each wrong port is one of the examples with one
mistake edited into its source (PyTorch through ``--layout nchw``, plain JAX, and the C
program through ``--exec``): different arithmetic, different rounding, and, for TF32, a
different rounding mode (truncation, where the twin rounds to nearest). The checker must
reject each under fp32 and name the mistake most often.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.running import invoke
from resblock.conformance.running.targets import load_target
from resblock.golden.cli import default_goldens

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

TORCH_CONV = 'F.conv2d(h, t(params[conv]["kernel"]), t(params[conv]["bias"]), padding=1)'
TORCH_EDITS = {
    "epsilon_1e3": [("EPS = 1e-5", "EPS = 1e-3")],
    "torch_default_momentum": [("MOMENTUM = 0.01  #", "MOMENTUM = 0.1  #")],
    "missing_residual": [("y = torch.relu(h + x)", "y = torch.relu(h)")],
    "torch_unbiased_running_var": [
        ("new_var = (keep * old + batch_term * ((n - 1) / n)).float()",
         "new_var = layer.running_var.clone()")],
    "circular_padding": [(TORCH_CONV, 'F.conv2d(F.pad(h, (1, 1, 1, 1), mode="circular"), '
                                      't(params[conv]["kernel"]), t(params[conv]["bias"]))')],
    "reflect_padding": [(TORCH_CONV, 'F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), '
                                     't(params[conv]["kernel"]), t(params[conv]["bias"]))')],
    # The README's old wording read literally: the whole running_var times (n-1)/n.
    "whole_running_var_converted": [
        ("new_var = (keep * old + batch_term * ((n - 1) / n)).float()",
         "new_var = (layer.running_var.double() * ((n - 1) / n)).float()")],
    # Real TF32 on a GPU truncates or rounds each operand to 10 mantissa bits; this port
    # truncates (clears the low 13 bits), where the kit's twin rounds to nearest.
    "tf32_conv": [(TORCH_CONV, 'F.conv2d(_tf32(h), _tf32(t(params[conv]["kernel"])), '
                               't(params[conv]["bias"]), padding=1)'),
                  ("def forward(x, params, batch_stats):",
                   "def _tf32(a):\n    return (a.view(torch.int32) & -8192).view(torch.float32)"
                   "\n\n\ndef forward(x, params, batch_stats):")],
}

I8 = "\n" + " " * 8
JAX_CONV = f"{I8}x,{I8}kernel,{I8}window_strides"
JAX_EDITS = {
    "epsilon_1e4": [("EPS = 1e-5", "EPS = 1e-4")],
    "kernel_flipped": [(JAX_CONV, f"{I8}x,{I8}kernel[::-1, ::-1],{I8}window_strides")],
    "bf16_conv": [(JAX_CONV, f"{I8}x.astype(jnp.bfloat16),{I8}kernel.astype(jnp.bfloat16),"
                             f"{I8}preferred_element_type=jnp.float32,{I8}window_strides")],
    "momentum_swapped": [("MOMENTUM = 0.99  #", "MOMENTUM = 0.01  #")],
}

C_EDITS = {
    "epsilon_1e4": [("#define EPSILON 1e-5", "#define EPSILON 1e-4")],
    "missing_residual": [("float v = u[p] + x[p];", "float v = u[p];")],
}


def _edited(src: Path, dst: Path, edits) -> Path:
    text = src.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{src.name}: edit anchor {old!r} not found once"
        text = text.replace(old, new)
    dst.write_text(text)
    return dst


def _named(run):
    assert not run.conforms
    assert run.count("fail") > 0, [(r.id, r.message) for r in run.results[:3]]
    assert run.pitfalls, "no failing case was named"
    return run.pitfalls.most_common(1)[0][0]


def _check(invoker, target, layout="nhwc", program=False):
    cfg = CheckConfig(target=target, layout=layout, diagnose=True, program=program)
    return run_check(cfg, invoker, default_goldens())


@pytest.mark.parametrize("mistake", sorted(TORCH_EDITS))
def test_edited_torch_port_is_named_through_nchw(mistake, tmp_path):
    pytest.importorskip("torch")
    path = _edited(EXAMPLES / "torch_nchw.py", tmp_path / f"port_{mistake}.py",
                   TORCH_EDITS[mistake])
    target = f"{path}:forward"
    run = _check(invoke.InProcess(load_target(target), "functional", "nchw"), target, "nchw")
    assert _named(run) == mistake, run.pitfalls.most_common(3)


@pytest.mark.parametrize("mistake", sorted(JAX_EDITS))
def test_edited_jax_port_is_named(mistake, tmp_path):
    pytest.importorskip("jax")
    path = _edited(EXAMPLES / "jax_lax.py", tmp_path / f"port_{mistake}.py", JAX_EDITS[mistake])
    target = f"{path}:forward"
    run = _check(invoke.InProcess(load_target(target), "functional", "nhwc"), target)
    assert _named(run) == mistake, run.pitfalls.most_common(3)


@pytest.mark.parametrize("mistake", sorted(C_EDITS))
def test_edited_c_program_is_named_through_exec(mistake, tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = _edited(EXAMPLES / "c_program" / "resblock_block.c", tmp_path / "block.c",
                  C_EDITS[mistake])
    exe = tmp_path / "block"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-lm"], check=True)
    template = f"{exe} {{input}} {{output}}"
    run = _check(invoke.Program(template, 30.0), template, program=True)
    assert _named(run) == mistake, run.pitfalls.most_common(3)


def test_a_mistake_outside_the_table_is_rejected_but_not_misnamed(tmp_path):
    """eps = 2e-5 is no pitfall of the table: rejected on the low-amplitude cases, and
    never passed off as a rounding mode (bf16's loose bound holds such small errors)."""
    pytest.importorskip("jax")
    path = _edited(EXAMPLES / "jax_lax.py", tmp_path / "port_eps2e5.py",
                   [("EPS = 1e-5", "EPS = 2e-5")])
    target = f"{path}:forward"
    run = _check(invoke.InProcess(load_target(target), "functional", "nhwc"), target)
    assert not run.conforms and run.count("fail") >= 5
    assert not set(run.pitfalls) & {"bf16_conv", "tf32_conv"}, run.pitfalls
