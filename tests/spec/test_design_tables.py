"""DESIGN.md's coverage table is the output of ``resblock coverage`` on the committed set
(scripts/coverage_table.py), so the document cannot drift from the goldens."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("coverage_table",
                                                  ROOT / "scripts" / "coverage_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_design_coverage_table_is_the_coverage_command_output():
    mod = _script()
    text = (ROOT / "spec" / "DESIGN.md").read_text("utf-8")
    assert mod.block_of(text) == mod.table(), (
        "spec/DESIGN.md's coverage table differs from `resblock coverage` on the committed "
        "set: run `python scripts/coverage_table.py --write`")


def test_every_pitfall_row_is_in_the_table():
    from resblock.conformance.mistakes.pitfalls import names

    block = _script().block_of((ROOT / "spec" / "DESIGN.md").read_text("utf-8"))
    for name in names():
        assert f"| `{name}` |" in block
