"""Messages a newcomer needs (issue 12): each mistake gets one line that says what to do,
once, instead of a traceback or the same error for every case.

Run in-process (``--in-process``) against the smoke golden: these are about words, the
isolation is tested in running/test_probes.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resblock.cli import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOOD = f"""
import importlib.util as _u
_s = _u.spec_from_file_location("_msg_example", {str(EXAMPLES / 'numpy_float32.py')!r})
_m = _u.module_from_spec(_s)
_s.loader.exec_module(_m)
good = _m.forward
"""


@pytest.fixture
def check(smoke_golden, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args, impl=None, source=None, name="impl.py"):
        if source is not None:
            (tmp_path / name).write_text(source)
            impl = f"{name}:forward"
        return CliRunner().invoke(cli, ["check", "-q", "--in-process", "--impl", impl,
                                        "--goldens", str(smoke_golden[0]), *args])
    return run


def test_a_target_that_cannot_take_three_arguments_is_refused_once(check):
    r = check(source="def forward(x):\n    return x\n")
    assert r.exit_code == 2
    assert "forward(x) cannot be called with three arguments" in r.output
    assert r.output.count("Error") == 1


def test_exit_at_import_is_named(check):
    r = check(source=GOOD + "forward = good\nexit()\n")
    assert r.exit_code == 2 and "called sys.exit(None) (or exit())" in r.output


def test_flat_statistic_keys_get_the_nested_form(check):
    r = check(source=GOOD + """
def forward(x, params, stats):
    y, s = good(x, params, stats)
    return y, {f"{k}/{kk}": v for k, d in s.items() for kk, v in d.items()}
""")
    assert r.exit_code == 1
    assert "flat keys such as 'BatchNorm_0/mean'; nest them" in r.output


def test_an_nchw_port_called_as_nhwc_is_told_about_layout(check):
    pytest.importorskip("torch")
    r = check("-k", "functional", impl=f"{EXAMPLES / 'torch_nchw.py'}:forward")
    assert r.exit_code == 1 and "pass --layout nchw" in r.output


def test_a_deleted_parameter_is_reported_as_mutation(check):
    r = check(source=GOOD + """
def forward(x, params, stats):
    out = good(x, params, stats)
    try:
        del params["Conv_0"]
    except TypeError:
        pass
    return out
""")
    assert r.exit_code in (0, 1) and "Traceback" not in r.output


def test_a_module_target_next_to_a_file_gets_a_hint(check, tmp_path):
    (tmp_path / "my_block.py").write_text(GOOD + "forward = good\n")
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    r = check(impl="my_block:forward")
    assert r.exit_code == 2 and "give it as a file, --impl my_block.py:forward" in r.output


def test_a_file_named_like_a_package_does_not_shadow_it(check):
    # json.py importing json must get the standard library, not itself.
    r = check(source=GOOD + "import json\nassert hasattr(json, 'dumps')\nforward = good\n",
              name="json.py")
    assert r.exit_code == 0, r.output
    assert not any(p.endswith(str(Path.cwd())) for p in sys.path)


def test_bad_xfail_and_keyword_input_are_one_line(check, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9  # latin-1\n")
    r = check("--xfail", "bad.txt", source=GOOD + "forward = good\n")
    assert r.exit_code == 2 and "not UTF-8 text" in r.output
    for expr in ("(" * 1000, "not " * 250 + "seeded"):
        r = check("-k", expr, source=GOOD + "forward = good\n")
        assert r.exit_code == 2 and r.output.startswith("Error: -k"), r.output


def test_a_conforming_run_states_its_margin(check):
    r = check(source=GOOD + "forward = good\n")
    assert r.exit_code == 0 and "worst score " in r.output and "a margin of " in r.output


def test_the_diagnosis_cap_is_stated(smoke_golden):
    from resblock.conformance.judging.runner import CheckConfig, run_check
    from resblock.conformance.mistakes.variants import make_forward
    from resblock.conformance.reporting.report import terminal_summary
    from resblock.conformance.running.invoke import InProcess

    fn = make_forward("missing_residual")
    run = run_check(CheckConfig(target="t", max_diagnosed=2), InProcess(fn, "functional", "nhwc"),
                    [smoke_golden[0]])
    assert run.count("fail") > 2
    assert f"only the 2 worst of the {run.count('fail')} failing cases were diagnosed" in \
        terminal_summary(run)


@pytest.mark.parametrize("error", [
    "The size of tensor a (3) must match the size of tensor b (4) at non-singleton "
    "dimension 1",
    "mat1 and mat2 shapes cannot be multiplied (96x4 and 3x4)",
])
def test_framework_shape_errors_get_the_layout_hint(check, error):
    """PyTorch's own words for an NHWC tensor in an NCHW port (issue 20: 54 raw errors,
    no hint): the error keeps its text and gains the hint."""
    r = check(source=f"""
def forward(x, params, stats):
    raise RuntimeError({error!r})
""")
    assert r.exit_code == 1 and error[:30] in r.output and "pass --layout nchw" in r.output


def test_an_error_every_case_raises_is_printed_once_with_its_count(check):
    r = check(source="""
def forward(x, params, stats):
    raise ValueError("no BatchNorm support in this backend")
""")
    assert r.exit_code == 1
    n = int(r.output.split("failed (")[1].split(" errors")[0])  # every case of the file
    assert n >= 3
    assert r.output.count("raised ValueError: no BatchNorm support in this backend") == 1
    assert f"(the same error in {n} cases)" in r.output
    assert r.output.count("        the same error as ") == min(n, 10) - 1
