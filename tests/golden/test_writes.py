"""Clean writes (issue 12): golden files and reports appear whole or not at all, a
concurrent writer cannot replace a file without --force, and a write that fails (full
disk, file size limit, a path under a file) is one line and leaves no temporary file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from resblock.errors import GoldenFormatError, SchemaError
from resblock.golden.reader import GoldenFile
from resblock.golden.writer import GoldenWriter
from resblock.spec.cases import Case


def _copy_into(writer, src):
    """Write every group of golden ``src`` through ``writer``; return its metadata."""
    with GoldenFile(src) as gf:
        groups: dict = {}
        for e in gf.entries:
            groups.setdefault(e["group"], []).append(gf.case(e["id"]))
        for rows in groups.values():
            writer.copy_group([r.case for r in rows], rows)
        meta = {k: gf.metadata[k] for k in ("format_version", "spec_version", "kit_version",
                                            "environment", "computation", "created", "grid")}
    return meta


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_concurrent_writer_cannot_replace_the_file(smoke_golden, tmp_path):
    src, _ = smoke_golden
    out = tmp_path / "out.h5"
    first, second = GoldenWriter(out), GoldenWriter(out)  # both pass the existence check
    second.tmp = second.tmp.with_name(second.tmp.name + "-b")  # as another process would
    with first:
        meta = _copy_into(first, src)
        first.finish(meta)
    before = out.read_bytes()
    with pytest.raises(GoldenFormatError, match="created by another process"):
        with second:
            second.finish(_copy_into(second, src))
    assert out.read_bytes() == before and _leftovers(tmp_path) == []
    with GoldenWriter(out, force=True) as w:  # --force still replaces it
        w.finish(_copy_into(w, src))


def test_an_output_under_a_file_is_one_line(smoke_golden, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(GoldenFormatError, match=r"file is a file, not a folder") as e:
        with GoldenWriter(tmp_path / "file" / "out.h5") as w:
            w.finish({})
    assert "\n" not in str(e.value)
    from click.testing import CliRunner

    from resblock.cli import cli

    monkeypatch.chdir(tmp_path)
    for args in (["generate", "--preset", "smoke", "--jobs", "2", "-o", "file/out.h5"],
                 ["merge", "file/m.h5", str(smoke_golden[0])]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and r.output.startswith("Error: cannot write"), r.output


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(smoke_golden, tmp_path):
    # RLIMIT_FSIZE makes writes past 20 kB fail with EFBIG, as a full disk fails them; the
    # writer sees it coming (HDF5 itself would crash closing the file).
    src, _ = smoke_golden
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
            "from resblock.cli import main\n"
            f"sys.argv = ['resblock', 'merge', 'out.h5', {str(src)!r}]\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "can be written there" in r.stderr
    assert os.listdir(tmp_path) == []


def test_temporary_files_of_dead_writers_are_removed(smoke_golden, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.h5.tmp-{dead}"
    stale.write_bytes(b"partial")
    with GoldenWriter(tmp_path / "out.h5") as w:
        w.finish(_copy_into(w, smoke_golden[0]))
    assert not stale.exists() and os.listdir(tmp_path) == ["out.h5"]


def test_reports_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from resblock.conformance.reporting import report

    target = tmp_path / "report.json"
    target.write_text("old")

    def broken_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        report.write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
    report.write_text_atomic(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def _arrays(case, k=1):
    from resblock.golden import store

    n, h, w, f = case.x_shape
    return {name: np.zeros((k,) + store.expected_shape(name, n, h, w, f),
                           store.expected_dtype(name)) for name in store.CASE_ARRAYS}


def test_writer_refuses_missing_and_misshapen_arrays(tmp_path):
    case = Case("seeded", "normal", 1, 2, 2, 2, 0)
    path = tmp_path / "w.h5"
    with pytest.raises(GoldenFormatError, match=r"missing arrays \['y'\]"):
        with GoldenWriter(path) as w:
            arrays = _arrays(case)
            del arrays["y"]
            w.write_group([case], arrays, [{"kappa": 1.0, "ref_score": 0.0}])
    with pytest.raises(GoldenFormatError, match=r"n1_h2_w2_f2/x: shape \(1, 1, 2, 2, 3\)"):
        with GoldenWriter(path) as w:
            arrays = _arrays(case)
            arrays["x"] = np.zeros((1, 1, 2, 2, 3), np.float32)
            w.write_group([case], arrays, [{"kappa": 1.0, "ref_score": 0.0}])
    assert list(tmp_path.iterdir()) == []


def test_writer_validates_metadata_before_renaming(tmp_path):
    case = Case("seeded", "normal", 1, 2, 2, 2, 0)
    path = tmp_path / "w.h5"
    with pytest.raises(SchemaError, match=f"metadata for {path}"):
        with GoldenWriter(path) as w:
            w.write_group([case], _arrays(case), [{"kappa": 1.0, "ref_score": 0.0}])
            w.finish({"format_version": "1.0.0"})
    assert list(tmp_path.iterdir()) == []


def test_reports_write_into_a_fifo_or_device_and_keep_links(tmp_path):
    """``--json-report /dev/stdout`` or ``>(jq .)``: the report goes into the pipe, which
    stays a pipe (a rename over it would replace it with a file; as root, over
    /dev/null, for every process of the machine). A link to a file keeps its link."""
    import stat
    import threading

    from resblock.conformance.reporting import report

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    report.write_text_atomic(fifo, "through the pipe")
    reader.join(10)
    assert got == ["through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    report.write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_golden_output_that_is_a_fifo_or_device_is_refused_even_with_force(tmp_path):
    import stat

    from resblock.errors import GoldenFormatError
    from resblock.golden.writer import check_output_path, publish

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(GoldenFormatError, match="not a regular file.*even with --force"):
        check_output_path(fifo)
    with pytest.raises(GoldenFormatError, match="not a regular file"):
        with GoldenWriter(fifo, force=True):
            pass
    done = tmp_path / ".done.tmp"
    done.write_bytes(b"hdf5")
    with pytest.raises(GoldenFormatError, match="not a regular file"):
        publish(done, fifo, force=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and done.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".pipe.h5")]
