"""SPEC.md section 6's worked example equals what scripts/worked_example.py prints.

The block is generated from the committed goldens; when they are regenerated this test
fails until ``python scripts/worked_example.py --write`` is re-run, so the numbers in the
spec cannot drift from the data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "worked_example.py"


def _script():
    spec = importlib.util.spec_from_file_location("worked_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spec_worked_example_matches_script_output():
    we = _script()
    text = we.SPEC.read_text("utf-8")
    assert text.count(we.BEGIN) == 1 and text.count(we.END) == 1
    assert we.spec_block(text) == we.render(), (
        "spec/SPEC.md's worked example is stale: run python scripts/worked_example.py --write")


def test_worked_example_stages_follow_the_pseudo_code():
    """The printed numbers obey section 3.0: bn1 from conv1's batch moments, and so on."""
    import numpy as np

    from resblock.golden.manifest import committed_paths
    from resblock.golden.reader import GoldenFile

    we = _script()
    with GoldenFile(committed_paths()[0]) as gf:
        gc = gf.case(we.CASE_ID).detached()
    a, p = gc.arrays, gc.params
    conv1 = a["oracle/stages/conv1"]
    mean, var = we.moments(conv1)
    bn = p["BatchNorm_0"]
    bn1 = (conv1 - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]
    np.testing.assert_allclose(bn1, a["oracle/stages/bn1"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.maximum(a["oracle/stages/sum"], 0), a["oracle/y"], atol=0)


def test_spec_inference_worked_example_matches_script_output():
    we = _script()
    text = we.SPEC.read_text("utf-8")
    assert we.docblocks.block(text, we.INFERENCE_BLOCK) == we.render_inference(), (
        "spec/SPEC.md's inference worked example is stale: run python "
        "scripts/worked_example.py --write")


def test_inference_worked_example_folds_as_section_12_says():
    """The printed folded kernel and bias give the same BatchNorm output as subtracting
    first: conv(a, k g) + (b - mean) g + beta == (conv(a, k) + b - mean) g + beta."""
    import numpy as np

    from resblock.golden.manifest import committed_paths
    from resblock.golden.reader import GoldenFile
    from resblock.spec import inference
    from resblock.spec.oracle import conv3x3

    we = _script()
    with GoldenFile(committed_paths()[0]) as gf:
        gc = gf.case(we.CASE_ID).detached()
    p, rs = gc.params, gc.running_stats
    g = inference.bn_gain(p["BatchNorm_0"]["scale"], rs["BatchNorm_0"]["var"])
    k = np.asarray(p["Conv_0"]["kernel"], np.float64)
    b = np.asarray(p["Conv_0"]["bias"], np.float64)
    folded = conv3x3(np.asarray(gc.x, np.float64), k * g,
                     (b - rs["BatchNorm_0"]["mean"]) * g + p["BatchNorm_0"]["bias"])
    ref = inference.forward(gc.x, p, rs)
    assert np.allclose(folded, ref.stages["bn1"], rtol=1e-12, atol=1e-12)
    assert np.array_equal(np.maximum(ref.stages["sum"], 0), ref.y)
    assert rs["BatchNorm_1"]["var"][0] == np.float32(1e-6)
