"""Tests of conformance/judging/select.py: ``-k`` expressions and ``--xfail`` files.

The last part runs the wrong variant ``missing_conv_bias`` (which fails only the cases
whose running mean reveals the dropped bias) through ``run_check`` and checks how
expected failures, unexpected passes and stale entries come out.
"""

import pytest
from click.testing import CliRunner

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.judging.select import compile_keyword, read_xfail, xfail_for
from resblock.conformance.mistakes.variants import make_forward
from resblock.conformance.reporting.report import json_report, terminal_summary
from resblock.conformance.running.invoke import InProcess
from resblock.errors import HarnessError
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile

IDS = [
    "seeded-normal-n1-4x4-f4-s0",
    "seeded-normal-n1-8x8-f1-s0",
    "seeded-normal-n1-8x8-f16-s1",
    "functional-normal-n2-4x4-f4-s1",
    "stress-lowamp-n2-8x8-f4-s0",
    "stress-offset-n1-8x8-f8-s0",
]


def selected(expr):
    pred = compile_keyword(expr)
    return [i for i in IDS if pred(i)]


# --- -k ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, want",
    [
        ("seeded", IDS[:3]),
        ("8x8", [IDS[1], IDS[2], IDS[4], IDS[5]]),
        ("seeded and not f16", IDS[:2]),
        ("stress or functional", IDS[3:]),
        ("not seeded", IDS[3:]),
        ("not not seeded", IDS[:3]),
        ("not (seeded or stress)", [IDS[3]]),
        ("(seeded or stress) and 8x8 and not lowamp", [IDS[1], IDS[2], IDS[5]]),
        # 'and' binds tighter than 'or': functional or (seeded and f1-)
        ("functional or seeded and f1-", [IDS[1], IDS[3]]),
        ("  seeded   and(f4 )", [IDS[0]]),
        ("nothing_matches", []),
    ],
)
def test_keyword_expressions(expr, want):
    assert selected(expr) == want


@pytest.mark.parametrize(
    "expr, want",
    [
        ("seeded-*-s1", [IDS[2]]),  # a glob must match the whole id
        ("seeded-*", IDS[:3]),
        ("*-f1-*", [IDS[1]]),  # unlike the substring 'f1', which also matches f16
        ("*-f1?-*", [IDS[2]]),
        ("*-f[48]-*", [IDS[0], IDS[3], IDS[4], IDS[5]]),
        ("*-s1", [IDS[2], IDS[3]]),
        ("seeded-*-s", []),  # not a prefix match
        ("stress-* and not *lowamp*", [IDS[5]]),
    ],
)
def test_keyword_globs(expr, want):
    assert selected(expr) == want


def test_substring_word_matches_inside_ids():
    assert selected("f1") == [IDS[1], IDS[2]]


@pytest.mark.parametrize(
    "expr, fragment",
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("and seeded", "expected a word or '(' at token 1"),
        ("seeded and", "expected a word or '(' at token 3"),
        ("seeded or or stress", "expected a word or '(' at token 3"),
        ("not", "expected a word or '(' at token 2"),
        ("(seeded or stress", "missing ')'"),
        ("()", "expected a word or '(' at token 2"),
        ("seeded)", "unexpected ')' at token 2"),
        ("seeded stress", "unexpected 'stress' at token 2"),
    ],
)
def test_malformed_keyword_expressions(expr, fragment):
    with pytest.raises(HarnessError) as e:
        compile_keyword(expr)
    assert fragment in str(e.value)
    assert str(e.value).startswith(f"-k {expr!r}")


# --- xfail files ---------------------------------------------------------------------


def write(tmp_path, text, name="xfail.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_xfail_file_entries(tmp_path):
    p = write(tmp_path, (
        "# expected failures of my port\n"
        "\n"
        "seeded-normal-n1-4x4-f4-s0   # TF32 on the GPU\n"
        "   stress-lowamp-*  #   epsilon placement   \n"
        "functional-normal-n2-4x4-f4-s1\n"
        "   # an indented comment\n"
        "*-f1[6]-*#no space before the hash\n"
    ))
    entries = read_xfail(p)
    assert [(e.pattern, e.reason, e.line) for e in entries] == [
        ("seeded-normal-n1-4x4-f4-s0", "TF32 on the GPU", 3),
        ("stress-lowamp-*", "epsilon placement", 4),
        ("functional-normal-n2-4x4-f4-s1", "(no reason given)", 5),
        ("*-f1[6]-*", "no space before the hash", 7),
    ]
    assert xfail_for("seeded-normal-n1-4x4-f4-s0", entries).line == 3
    assert xfail_for("stress-lowamp-n2-8x8-f4-s0", entries).reason == "epsilon placement"
    assert xfail_for("seeded-normal-n1-8x8-f16-s1", entries).line == 7
    assert xfail_for("seeded-normal-n1-8x8-f1-s0", entries) is None


def test_xfail_plain_entry_matches_the_exact_id_only(tmp_path):
    entries = read_xfail(write(tmp_path, "seeded-normal-n1-4x4-f4-s\n"))
    assert xfail_for("seeded-normal-n1-4x4-f4-s0", entries) is None
    assert xfail_for("seeded-normal-n1-4x4-f4-s", entries) is not None


def test_xfail_first_matching_entry_wins(tmp_path):
    entries = read_xfail(write(tmp_path, "seeded-*  # broad\nseeded-normal-n1-4x4-f4-s0 # exact\n"))
    assert xfail_for("seeded-normal-n1-4x4-f4-s0", entries).reason == "broad"


def test_xfail_empty_file_has_no_entries(tmp_path):
    assert read_xfail(write(tmp_path, "# nothing yet\n\n")) == []


def test_xfail_malformed_line_names_file_and_line(tmp_path):
    p = write(tmp_path, "# ok\nseeded-normal-n1-4x4-f4-s0 seeded-normal-n1-4x4-f4-s1  # two\n")
    with pytest.raises(HarnessError) as e:
        read_xfail(p)
    assert str(e.value).startswith(f"{p}:2: one case id or glob per line")
    assert "'seeded-normal-n1-4x4-f4-s0 seeded-normal-n1-4x4-f4-s1'" in str(e.value)


def test_xfail_missing_file(tmp_path):
    with pytest.raises(HarnessError, match="--xfail .*missing.txt: no such file"):
        read_xfail(tmp_path / "missing.txt")


# --- xfail through run_check ---------------------------------------------------------

VARIANT = "missing_conv_bias"


@pytest.fixture(scope="module")
def bias_outcome():
    """Ids that ``missing_conv_bias`` fails and passes on the committed goldens."""
    run = run_check(CheckConfig(target=VARIANT, diagnose=False),
                    InProcess(make_forward(VARIANT), "functional", "nhwc"), default_goldens())
    failing = [r.id for r in run.results if r.status == "fail"]
    passing = [r.id for r in run.results if r.status == "pass"]
    assert failing and passing and len(failing) + len(passing) == len(run.results)
    return failing, passing


def check(xfail_path, keyword=None):
    cfg = CheckConfig(target=VARIANT, xfail=str(xfail_path), keyword=keyword, diagnose=False)
    return run_check(cfg, InProcess(make_forward(VARIANT), "functional", "nhwc"),
                     default_goldens())


def test_xfailed_failures_conform(tmp_path, bias_outcome):
    failing, passing = bias_outcome
    p = write(tmp_path, "# the port drops the conv bias\n"
              + "".join(f"{i}  # bias dropped\n" for i in failing))
    run = check(p)
    assert run.count("xfail") == len(failing)
    assert run.count("pass") == len(passing)
    assert run.count("fail") == run.count("error") == run.count("xpass") == 0
    assert run.conforms
    assert run.stale_xfail == []
    assert all(r.xfail_reason == "bias dropped" for r in run.results if r.status == "xfail")
    text = terminal_summary(run)
    assert f"CONFORMS: {len(passing)} passed, 0 failed (0 errors), {len(failing)} xfailed" in text
    assert "warning" not in text


def test_xpass_and_stale_entries_are_reported(tmp_path, bias_outcome):
    failing, passing = bias_outcome
    lines = [f"{i}  # bias dropped" for i in failing]
    lines.append(f"{passing[0]}  # thought it failed")  # line len(failing) + 1
    lines.append("seeded-normal-n1-99x99-f4-s0  # long gone")  # line len(failing) + 2
    p = write(tmp_path, "\n".join(lines) + "\n")
    run = check(p)
    assert [r.id for r in run.results if r.status == "xpass"] == [passing[0]]
    assert run.count("xfail") == len(failing)
    assert run.conforms  # an unexpected pass is a warning, not a failure
    assert run.stale_xfail == [
        f"{p}:{len(failing) + 2}: seeded-normal-n1-99x99-f4-s0 matches no checked case"
    ]
    text = terminal_summary(run)
    assert (f"warning: {passing[0]} is listed in --xfail (thought it failed) but passes; "
            "remove the entry") in text
    assert f"warning: stale xfail entry {p}:{len(failing) + 2}: seeded-normal-n1-99x99" in text
    assert f"XPASS {passing[0]}" in text
    assert "1 xpassed" in text
    assert json_report(run)["summary"]["xpass"] == 1
    assert json_report(run)["stale_xfail"] == run.stale_xfail


def test_entry_outside_the_k_selection_is_stale(tmp_path, bias_outcome):
    failing, _ = bias_outcome
    p = write(tmp_path, f"{failing[0]}\n{failing[1]}\n")
    run = check(p, keyword=failing[0])
    assert [r.status for r in run.results] == ["xfail"]
    assert run.stale_xfail == [f"{p}:2: {failing[1]} matches no checked case"]


def test_unlisted_failures_still_fail(tmp_path, bias_outcome):
    failing, _ = bias_outcome
    p = write(tmp_path, f"{failing[0]}\n")
    run = check(p)
    assert run.count("xfail") == 1 and run.count("fail") == len(failing) - 1
    assert not run.conforms


def test_cli_exit_codes_with_xfail(tmp_path, bias_outcome):
    failing, _ = bias_outcome
    impl = write(tmp_path, "from resblock.conformance.mistakes.variants import make_forward\n"
                 f"forward = make_forward({VARIANT!r})\n", "impl.py")
    full = write(tmp_path, "".join(f"{i}  # bias dropped\n" for i in failing), "all.txt")
    part = write(tmp_path, f"{failing[0]}\n", "part.txt")
    bad = write(tmp_path, "two ids\n", "bad.txt")
    runner = CliRunner()
    base = ["check", "--impl", f"{impl}:forward", "-q", "--no-diagnose"]
    r = runner.invoke(cli, base + ["--xfail", str(full)])
    assert r.exit_code == 0, r.output
    assert "CONFORMS" in r.output
    r = runner.invoke(cli, base + ["--xfail", str(part)])
    assert r.exit_code == 1, r.output
    r = runner.invoke(cli, base + ["--xfail", str(bad)])
    assert r.exit_code == 2
    assert "one case id or glob per line" in r.output
    r = runner.invoke(cli, base + ["--xfail", str(tmp_path / "none.txt")])
    assert r.exit_code == 2
    assert "no such file" in r.output


def test_keyword_selection_through_run_check(tmp_path):
    cfg = CheckConfig(target="correct_float32", keyword="seeded and 8x8 and not f16")
    run = run_check(cfg, InProcess(make_forward("correct_float32"), "functional", "nhwc"),
                    default_goldens())
    with GoldenFile(default_goldens()[0]) as gf:
        want = sorted(i for i in gf.ids
                      if i.startswith("seeded") and "8x8" in i and "f16" not in i)
    assert sorted(r.id for r in run.results) == want
    assert len(want) >= 3 and len(want) < len(gf.ids) / 4
