"""generator/resources.py: what a grid costs is known before it runs (issue 12)."""

from __future__ import annotations

import h5py
import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.errors import GridError
from resblock.generator import resources
from resblock.spec.cases import Case


def generate(*args):
    return CliRunner().invoke(cli, ["generate", "-o", "never.h5", *args])


def test_case_bytes_is_what_a_golden_file_stores(smoke_golden):
    path, meta = smoke_golden
    with h5py.File(path, "r") as f:
        for g in meta["groups"]:
            stored = []

            def add(name, obj, stored=stored):
                if isinstance(obj, h5py.Dataset) and name != "case_ids":
                    stored.append(obj.nbytes)

            f[f"groups/{g['name']}"].visititems(add)
            want = g["size"] * resources.case_bytes(g["n"], g["h"], g["w"], g["features"],
                                                    stages=True)  # the fixture stores them
            assert sum(stored) == want, g["name"]


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0-999999999"], "expands to 1000000000 values, more than 100000"),
    (["--family", "functional", "--batch", "1-50000", "--seeds", "0-9"],
     "the grid has up to 500000 cases"),
    (["--shapes", "10000x10000"], "needs about 320.0 GB while it is computed"),
    (["--shapes", "600x600", "--memory-limit", "0.5"],
     "more than the limit of 0.5 GB (--memory-limit)"),
])
def test_oversized_grids_are_refused_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = generate(*args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_the_limit_is_the_largest_group():
    small = [Case("functional", "normal", 1, 4, 4, 4, s) for s in range(3)]
    big = Case("functional", "normal", 2, 64, 64, 8, 0)
    ((group, k, need), *_) = resources.group_memory(small + [big])
    assert group == big.group and k == 1
    assert need == resources.WORKING_FACTOR * resources.case_bytes(2, 64, 64, 8,
                                                                    stages=True)
    resources.check_memory(small + [big], need / 1e9 + 1)
    with pytest.raises(GridError, match=big.group):
        resources.check_memory(small + [big], need / 1e9 / 2)


def test_generate_without_jax_names_the_install_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flax" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    r = generate("--preset", "smoke")
    assert r.exit_code == 2 and 'pip install ".[jax]" in a resblock checkout' in r.output, \
        r.output


def test_no_progress_line_off_a_terminal_and_a_note_on_seeded_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["generate", "-o", "g.h5", "--family", "seeded,functional",
                                 "--batch", "1,2", "--shapes", "1x1", "--features", "1"])
    assert r.exit_code == 0, r.output
    assert "note: seeded cases take batch 1 only" in r.output
    assert "\ncases" not in r.output and not r.output.startswith("cases")


def test_the_backward_arrays_count_when_stored():
    from resblock.golden.store import CASE_ARRAYS, GRAD_ARRAYS

    fwd, both = resources.case_bytes(2, 4, 4, 8), resources.case_bytes(2, 4, 4, 8, grad=True)
    assert both > fwd and len(GRAD_ARRAYS) > 0 and len(CASE_ARRAYS) > 0
    big = [Case("functional", "normal", 1, 300, 300, 8, 0)]
    need = resources.group_memory(big, grad=True)[0][2]
    resources.check_memory(big, need / 1e9 + 0.01, grad=True)
    with pytest.raises(GridError):
        resources.check_memory(big, need / 1e9 - 0.01, grad=True)
    resources.check_memory(big, need / 1e9 - 0.01)  # forward only: fits


def test_case_bytes_counts_the_inference_block():
    """inference/y, four f4 budgets and spreads, the f8 oracle, four running statistics."""
    n, h, w, f = 2, 5, 7, 3
    extra = (resources.case_bytes(n, h, w, f, inference=True)
             - resources.case_bytes(n, h, w, f))
    assert extra == n * h * w * f * (5 * 4 + 8) + 4 * f * 4
