"""Gradient datasets in golden files (format 2.1): written per group by ``generate(grad=True)``,
covered by the case hash, forward arrays bit-identical to a forward-only file, and the
reference's ``jax.vjp`` within the oracle's backward budgets.
"""

import h5py
import numpy as np
import pytest

from resblock.generator.run import generate
from resblock.golden.reader import GoldenFile
from resblock.golden.store import GRAD_ARRAYS
from resblock.spec.cases import Case

CASES = [Case("functional", "normal", 2, 3, 3, 2, 0), Case("seeded", "normal", 1, 4, 4, 4, 0)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("grad")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")
        generate(CASES, d / "fwd.h5")
        generate(CASES, d / "grad.h5", grad=True)
    return d / "fwd.h5", d / "grad.h5"


def test_forward_arrays_identical_and_gradients_present(pair):
    fwd, grad = pair
    with GoldenFile(fwd) as a, GoldenFile(grad) as b:
        assert a.hash_problems() == [] and b.hash_problems() == []
        for c in CASES:
            ca, cb = a.case(c.id), b.case(c.id)
            assert not ca.has_grad and cb.has_grad
            assert set(cb.arrays) - set(ca.arrays) == set(GRAD_ARRAYS)
            for k, v in ca.arrays.items():
                assert np.array_equal(v, cb.arrays[k]), k
            assert cb.y_bar.shape == c.x_shape and cb.y_bar.dtype == np.float32


def test_reference_gradients_within_the_backward_budgets(pair):
    from resblock.conformance.mistakes.variants_backward import backward_score
    from resblock.golden.store import grad_path
    from resblock.spec import tolerance
    from resblock.spec.error_model_backward import GRAD_TENSORS

    with GoldenFile(pair[1]) as gf:
        for gc in gf.iter_cases():
            ref = {n: gc.arrays[grad_path(n)] for n in GRAD_TENSORS}
            assert backward_score(gc, ref, tolerance.profile("fp32")) < 0.1


def test_case_hash_covers_gradients(pair, tmp_path):
    import shutil

    path = tmp_path / "edited.h5"
    shutil.copy(pair[1], path)
    with h5py.File(path, "r+") as f:
        ds = f["groups/n2_h3_w3_f2/oracle/grad/params/Conv_1/kernel"]
        a = ds[()]
        a[0, 0, 0, 0, 0] += 1e-9
        ds[...] = a
    with GoldenFile(path) as gf:
        assert any("content hash mismatch" in p for p in gf.hash_problems())


def test_partial_gradient_group_is_refused(pair, tmp_path):
    import shutil

    from resblock.errors import GoldenFormatError

    path = tmp_path / "partial.h5"
    shutil.copy(pair[1], path)
    with h5py.File(path, "r+") as f:
        del f["groups/n2_h3_w3_f2/budget/grad/x"]
    with pytest.raises(GoldenFormatError, match="budget/grad/x is missing"):
        GoldenFile(path)


def test_verify_recomputes_the_backward(pair):
    from resblock.golden.store import GoldenCase
    from resblock.golden.verify import gradient_problem, verify_file
    from resblock.spec import tolerance

    prof = tolerance.profile("fp32")
    assert verify_file(pair[1]).ok
    with GoldenFile(pair[1]) as gf:
        gc = gf.case(CASES[0].id).detached()
    assert gradient_problem(gc, prof) is None

    def edited(name, f):
        arrays = dict(gc.arrays)
        arrays[name] = f(arrays[name].copy())
        return GoldenCase(case=gc.case, entry=gc.entry, arrays=arrays)

    assert "oracle backward recomputed" in gradient_problem(
        edited("oracle/grad/params/Conv_1/kernel", lambda a: a + 1e-3), prof)
    assert "budget recomputed" in gradient_problem(
        edited("budget/grad/x", lambda a: a * 10), prof)
    assert "deviate from the float64 oracle backward" in gradient_problem(
        edited("grad/params/BatchNorm_0/scale", lambda a: a + 1.0), prof)


def test_a_check_reads_and_verifies_only_the_parts_it_uses(pair, tmp_path):
    """Format 3 seals forward, stages and gradients apart: damaged gradients do not stop
    a forward check (it never reads them) and refuse a backward check before anything
    runs; damaged forward arrays refuse both."""
    import shutil
    from pathlib import Path

    from click.testing import CliRunner

    from resblock.cli import cli

    examples = Path(__file__).resolve().parents[2] / "examples"
    forward = ["check", "-q", "--in-process", "--impl", f"{examples}/numpy_float32.py:forward"]
    backward = ["check", "-q", "--in-process", "--api", "backward", "--impl",
                f"{examples}/numpy_backward.py:backward"]

    def damaged(name):
        path = tmp_path / f"{name.replace('/', '_')}.h5"
        shutil.copy(pair[1], path)
        with h5py.File(path, "r+") as f:
            ds = f[f"groups/{CASES[0].group}/{name}"]
            a = ds[()]
            a.flat[0] += 1
            ds[...] = a
        return str(path)

    intact = [CliRunner().invoke(cli, cmd + ["--goldens", str(pair[1])]) for cmd in
              (forward, backward)]
    assert [r.exit_code for r in intact] == [0, 0], [r.output for r in intact]
    grad = damaged("grad/params/Conv_0/kernel")
    r = CliRunner().invoke(cli, forward + ["--goldens", grad])
    assert r.exit_code == 0 and "CONFORMS: 2 passed" in r.output, r.output
    r = CliRunner().invoke(cli, backward + ["--goldens", grad])
    assert r.exit_code == 2 and "content hash mismatch of its grad arrays" in r.output
    assert "passed" not in r.output  # refused before any case ran
    fwd = damaged("oracle/y")
    for cmd in (forward, backward):
        r = CliRunner().invoke(cli, cmd + ["--goldens", fwd])
        assert r.exit_code == 2 and "content hash mismatch of its forward arrays" in r.output
