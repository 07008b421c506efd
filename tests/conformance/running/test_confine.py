"""Tests for conformance/running/confine.py: Landlock confinement of the worker."""

import subprocess
import sys

import pytest

from resblock.conformance.running import confine


def test_without_cuts_a_hidden_folder_out_of_a_tree_and_keeps_its_python(tmp_path):
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "default.h5").write_bytes(b"answers")
    (tmp_path / "golden" / "reader.py").write_text("")
    (tmp_path / "spec").mkdir()
    (tmp_path / "README.md").write_text("")
    got = confine.without([str(tmp_path), "/usr"], [str(tmp_path / "golden")])
    assert sorted(got) == sorted([str(tmp_path / "README.md"),
                                  str(tmp_path / "golden" / "reader.py"),
                                  str(tmp_path / "spec"), "/usr"])


def test_handled_rights_grow_with_the_abi():
    assert confine.handled_rights(1) == (1 << 13) - 1
    assert confine.handled_rights(3) == (1 << 15) - 1
    assert confine.handled_rights(7) == (1 << 16) - 1


CHILD = """
import os, sys
from resblock.conformance.running import confine
work, hidden, outside = sys.argv[1:4]
print(confine.confine(work, [os.path.dirname(hidden)], hidden=[hidden]))
open(os.path.join(work, "ok"), "w").write("written")
for path, mode in ((os.path.join(hidden, "answers.h5"), "r"), (outside, "w"),
                   ("/proc/%d/environ" % os.getppid(), "r")):
    try:
        open(path, mode)
        print("opened", path)
    except PermissionError:
        print("denied", path)
"""


@pytest.mark.skipif(confine.abi_version() < 1, reason="Landlock is not available here")
def test_a_confined_process_writes_only_its_folder_and_reads_no_hidden_file(tmp_path):
    work, hidden = tmp_path / "work", tmp_path / "kit" / "golden"
    work.mkdir()
    hidden.mkdir(parents=True)
    (hidden / "answers.h5").write_bytes(b"y")
    outside = tmp_path / "outside.txt"
    out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(hidden), str(outside)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("Landlock ABI") and "writes to a private" in out[0]
    assert out[1:] == [f"denied {hidden / 'answers.h5'}", f"denied {outside}",
                       out[3].replace("opened", "denied")]
    assert out[3].startswith("denied")
    assert (work / "ok").read_text() == "written" and not outside.exists()
