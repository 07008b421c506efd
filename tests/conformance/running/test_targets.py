"""Tests of conformance/running/targets.py: ``module:function`` and ``file.py:function`` targets.

Every failure is a :class:`TargetError` (a HarnessError: exit code 2 in the CLI) whose
message quotes the target and says what was found and what is expected.
"""

import sys
from pathlib import Path

import pytest

from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.running.targets import load_target
from resblock.errors import HarnessError, TargetError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_module_function():
    assert load_target("resblock.conformance.mistakes.variants:make_forward") is make_forward


def test_file_function_absolute(tmp_path):
    f = tmp_path / "impl.py"
    f.write_text("def forward(x, params, batch_stats):\n    return 'called', x\n")
    fn = load_target(f"{f}:forward")
    assert fn(1, None, None) == ("called", 1)


def test_file_function_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "impl.py").write_text("def forward():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    assert load_target("impl.py:forward")() == 42


def test_file_can_import_its_sibling_modules_and_sys_path_is_restored(tmp_path):
    (tmp_path / "rb_sibling_helper.py").write_text("VALUE = 7\n")
    f = tmp_path / "impl.py"
    f.write_text("import rb_sibling_helper\n\ndef forward():\n    return rb_sibling_helper.VALUE\n")
    before = list(sys.path)
    try:
        assert load_target(f"{f}:forward")() == 7
        assert sys.path == before
    finally:
        sys.modules.pop("rb_sibling_helper", None)


def test_example_file_loads():
    fn = load_target(f"{EXAMPLES / 'numpy_float32.py'}:forward")
    assert callable(fn) and fn.__name__ == "forward"


def test_no_colon():
    with pytest.raises(TargetError) as e:
        load_target("examples/numpy_float32.py")
    msg = str(e.value)
    assert "'examples/numpy_float32.py'" in msg
    assert "expected MODULE:FUNCTION or path/to/file.py:FUNCTION" in msg
    assert isinstance(e.value, HarnessError)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(TargetError, match=r"no such file .*nope\.py"):
        load_target(f"{missing}:forward")


def test_import_error_inside_the_file(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import numpy\nBROKEN = 1 / 0\n\ndef forward():\n    pass\n")
    with pytest.raises(TargetError) as e:
        load_target(f"{f}:forward")
    msg = str(e.value)
    assert f"importing {f} failed" in msg
    assert "ZeroDivisionError: division by zero" in msg


def test_missing_module_import_error():
    with pytest.raises(TargetError, match="cannot import module 'resblock_no_such_module'.*"
                                          "ModuleNotFoundError"):
        load_target("resblock_no_such_module:forward")


def test_missing_attribute_lists_public_callables(tmp_path):
    f = tmp_path / "impl.py"
    f.write_text(
        "CONSTANT = 3\n"
        "def forward_nhwc(x, p, s):\n    pass\n"
        "def helper():\n    pass\n"
        "def _private():\n    pass\n"
        "class Block:\n    pass\n"
    )
    with pytest.raises(TargetError) as e:
        load_target(f"{f}:forward")
    msg = str(e.value)
    assert "has no attribute 'forward'" in msg
    assert msg.endswith("callables there: Block, forward_nhwc, helper")


def test_missing_attribute_when_nothing_is_callable(tmp_path):
    f = tmp_path / "impl.py"
    f.write_text("X = 1\n")
    with pytest.raises(TargetError, match="callables there: none$"):
        load_target(f"{f}:forward")


def test_not_callable(tmp_path):
    f = tmp_path / "impl.py"
    f.write_text("forward = [1, 2, 3]\n")
    with pytest.raises(TargetError, match="forward is not callable"):
        load_target(f"{f}:forward")
