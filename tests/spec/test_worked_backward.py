"""SPEC.md section 10.5's worked example equals what scripts/worked_backward.py prints
(regenerated goldens: re-run ``python scripts/worked_backward.py --write``)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "worked_backward.py"


def test_spec_worked_backward_matches_script_output():
    spec = importlib.util.spec_from_file_location("worked_backward", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.SPEC.read_text("utf-8")
    assert text.count(mod.BEGIN) == 1 and text.count(mod.END) == 1
    assert mod.spec_block(text) == mod.render(), (
        "spec/SPEC.md's backward worked example is stale: run "
        "python scripts/worked_backward.py --write")
