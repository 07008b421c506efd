"""`resblock list` and `show` as a newcomer meets them (issue 12)."""

from __future__ import annotations

from click.testing import CliRunner

from resblock.cli import cli
from resblock.golden.cli import default_goldens
from resblock.golden.reader import GoldenFile


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_show_defaults_to_the_committed_set_like_list():
    with GoldenFile(default_goldens()[0]) as gf:
        case_id = gf.entries[0]["id"]
    r = run("show", case_id)
    assert r.exit_code == 0 and f"id         {case_id}" in r.output, r.output
    r = run("show", "no-such-case")
    assert r.exit_code == 2 and "no case 'no-such-case' in the committed set" in r.output


def test_list_names_a_grid_without_preset(tmp_path):
    from resblock.generator.grid import preset_cases
    from resblock.generator.run import generate

    path = tmp_path / "axes.h5"
    generate(preset_cases("smoke")[:1], path, jobs=1)  # explicit cases, no preset
    r = run("list", path)
    assert r.exit_code == 0 and "preset none (explicit axes)" in r.output
    assert "preset None" not in r.output
