"""Hostile golden files (issue 12): golden/safety.py and golden/reader.py read only what
is in the file itself, check every declared size before reading, and name each refusal
in one line.

The fixture below builds each hostile file from a copy of the smoke golden: one dataset
(``x`` of the first group, or ``/metadata``) replaced by a link, a virtual dataset,
external raw storage, an unknown filter, an unallocated dataset that declares more bytes
than the file holds, or a group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from resblock.errors import GoldenFormatError
from resblock.golden.reader import GoldenFile


def _first_x(path) -> str:
    with h5py.File(path, "r") as f:
        meta = json.loads(f["metadata"][()])
    return f"groups/{meta['groups'][0]['name']}/x"


def _external_link(f, name, x, tmp):
    other = tmp / "other.h5"
    with h5py.File(other, "w") as o:
        o["x"] = x
    f[name] = h5py.ExternalLink(str(other), "/x")


def _fifo_link(f, name, x, tmp):
    fifo = tmp / "fifo.h5"
    os.mkfifo(fifo)
    f[name] = h5py.ExternalLink(str(fifo), "/x")


def _soft_link(f, name, x, tmp):
    f[name] = h5py.SoftLink("/" + name.rsplit("/", 1)[0] + "/y")


def _virtual(f, name, x, tmp):
    other = tmp / "other.h5"
    with h5py.File(other, "w") as o:
        o["x"] = x
    layout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
    layout[...] = h5py.VirtualSource(str(other), "x", shape=x.shape)
    f.create_virtual_dataset(name, layout)


def _external_storage(f, name, x, tmp):
    f.create_dataset(name, shape=x.shape, dtype=x.dtype,
                     external=[("/etc/passwd", 0, x.nbytes)])


def _unknown_filter(f, name, x, tmp):
    f.create_dataset(name, data=x, chunks=x.shape, compression=32123, allow_unknown_filter=True)


def _unallocated(f, name, x, tmp):
    f.create_dataset(name, shape=x.shape, dtype=x.dtype, chunks=True)  # no byte written


def _group(f, name, x, tmp):
    f.create_group(name)


HOSTILE = {
    "external_link": (_external_link, "is an external link to"),
    "external_link_to_fifo": (_fifo_link, "is an external link to"),
    "soft_link": (_soft_link, "is a soft link to"),
    "virtual_dataset": (_virtual, "is a virtual dataset"),
    "external_storage": (_external_storage, "keeps its data in the external file '/etc/passwd'"),
    "unknown_filter": (_unknown_filter, "uses the unknown HDF5 filter 32123"),
    "unallocated": (_unallocated, "but stores 0 bytes"),
    "group_for_dataset": (_group, "is a group where a dataset is expected"),
}


def _make_hostile(golden, tmp_path, kind):
    path, _ = golden
    make, message = HOSTILE[kind]
    name = _first_x(path)
    with h5py.File(path, "r+") as f:
        x = f[name][()]
        del f[name]
        make(f, name, x, tmp_path)
    return path, message


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request, golden, tmp_path):
    """``(path, expected message)``: a copy of the smoke golden made hostile."""
    return _make_hostile(golden, tmp_path, request.param)


# Every command, in a fresh process, on the kinds that used to hang or to traceback (the
# others share their code path: GoldenFile's open and part reads, tested above).
@pytest.fixture(params=["external_link_to_fifo", "group_for_dataset"])
def hostile_for_commands(request, golden, tmp_path):
    return _make_hostile(golden, tmp_path, request.param)


# Links are refused on open (following one could hang or read another file); a hostile
# dataset is refused when its part is first needed, before a byte of it is read.
REFUSED_ON_OPEN = ("external_link", "external_link_to_fifo", "soft_link")


def test_hostile_files_are_refused_before_reading(hostile, request):
    path, message = hostile
    with pytest.raises(GoldenFormatError) as e:
        with GoldenFile(path) as gf:
            assert request.node.callspec.params["hostile"] not in REFUSED_ON_OPEN
            gf.hash_problems()  # reads every part
    assert message in str(e.value) and str(e.value).startswith(str(path))
    assert "\n" not in str(e.value)


def test_a_hostile_dataset_is_refused_by_every_reader_of_its_part(golden, tmp_path):
    path, message = _make_hostile(golden, tmp_path, "external_storage")
    with GoldenFile(path) as gf:
        group = gf.entries[0]["group"]
        gf.part(group, "stages")  # x is not in it: readable
        for use in (lambda: gf.part(group, "forward"), lambda: gf.case(gf.ids[0]).x,
                    lambda: gf.hash_problems(parts=("forward",))):
            with pytest.raises(GoldenFormatError, match="keeps its data in the external"):
                use()


def test_every_command_refuses_a_hostile_file_in_one_line(hostile_for_commands, tmp_path):
    path, message = hostile_for_commands
    with h5py.File(path, "r") as f:
        first = json.loads(f["metadata"][()])["cases"][0]["id"]
    for args in (["list", path], ["verify", path], ["show", path, first],
                 ["check", "-q", "--impl", "x.py:forward", "--goldens", path],
                 ["diff", path, path], ["merge", tmp_path / "m.h5", path]):
        r = subprocess.run([sys.executable, "-m", "resblock", *map(str, args)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "Traceback" not in out, (args, out)
        if args[0] == "list" and "group where a dataset" in message:
            assert r.returncode == 0, out  # list reads the index only, never a dataset
            continue
        assert r.returncode in (1, 2) and message in out, (args, out)
    assert not (tmp_path / "m.h5").exists()


def test_metadata_replaced_by_a_group(golden):
    path, _ = golden
    with h5py.File(path, "r+") as f:
        del f["metadata"]
        f.create_group("metadata")
    with pytest.raises(GoldenFormatError, match="/metadata is a group where a dataset is"):
        GoldenFile(path)


def test_oversized_metadata_is_not_read(golden, monkeypatch):
    path, _ = golden
    with h5py.File(path, "r+") as f:
        text = f["metadata"][()]
        del f["metadata"]
        f.create_dataset("metadata", data=np.array(text, dtype=f"S{len(text) + 1000}"))
    import resblock.golden.reader as reader

    monkeypatch.setattr(reader, "METADATA_MAX_BYTES", len(text))
    with pytest.raises(GoldenFormatError, match="/metadata declares .* bytes, more than"):
        GoldenFile(path)


def test_an_oversized_variable_length_metadata_string_is_not_read(golden, monkeypatch):
    # Issue 20: a 300 MB variable-length string was refused only after h5py had read it
    # (1.7 GB); its declared length is now read from the stored reference first.
    path, _ = golden
    import resblock.golden.reader as reader

    with h5py.File(path, "r") as f:
        size = len(f["metadata"][()])
    monkeypatch.setattr(reader, "METADATA_MAX_BYTES", size - 1)
    monkeypatch.setattr(h5py.Dataset, "__getitem__",
                        lambda *a: pytest.fail("the string was read"))
    with pytest.raises(GoldenFormatError,
                       match=f"/metadata declares {size} bytes, more than {size - 1}"):
        GoldenFile(path)


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "golden.h5"
    os.mkfifo(fifo)
    with pytest.raises(GoldenFormatError, match="not a regular file"):
        GoldenFile(fifo)
    with pytest.raises(GoldenFormatError, match="no such golden file"):
        GoldenFile(tmp_path)


def test_a_forged_shape_is_refused_before_reading(golden, rewrite_metadata):
    # Metadata claims a 20000x20000 group; the datasets are what they are: a shape
    # mismatch, found without allocating anything.
    path, meta = golden
    meta["groups"][0].update(h=20000, w=20000)
    rewrite_metadata(path, meta)
    with pytest.raises(GoldenFormatError, match="listed with the shape of"):
        GoldenFile(path)


def test_a_clean_copy_still_opens(golden, tmp_path):
    path, _ = golden
    copy = tmp_path / "again.h5"
    shutil.copyfile(path, copy)
    with GoldenFile(copy) as gf:
        assert gf.entries and not gf.hash_problems()


def test_a_forged_metadata_length_is_refused_without_allocating_it(golden):
    # /metadata is a variable-length string: its length lives in HDF5's global heap. A
    # heap object claiming 12 GB in a small file is rejected by HDF5 itself (the read
    # would pass the end of the file) before anything is allocated: one line here.
    import struct

    path, _ = golden
    with h5py.File(path, "r") as f:
        text = f["metadata"][()]
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<Q", len(text)) + text[:16])
    assert at > 0
    struct.pack_into("<Q", data, at, 12 * 10**9)
    path.write_bytes(bytes(data))
    with pytest.raises(GoldenFormatError, match="damaged HDF5 structure"):
        GoldenFile(path)


def test_show_refuses_a_tampered_index_entry(golden, rewrite_metadata):
    """`show` prints nothing from a file whose index entry was edited after sealing (here
    kappa), as check, verify and diff refuse it; the untouched file shows."""
    from click.testing import CliRunner

    from resblock.cli import cli

    path, meta = golden
    cid = meta["cases"][0]["id"]
    ok = CliRunner().invoke(cli, ["show", str(path), cid])
    assert ok.exit_code == 0 and cid in ok.output
    meta["cases"][0]["kappa"] = meta["cases"][0]["kappa"] * 2
    rewrite_metadata(path, meta)
    r = CliRunner().invoke(cli, ["show", str(path), cid])
    assert r.exit_code == 2, r.output
    assert f"case {cid}: index hash mismatch (its index entry was modified)" in r.output
    assert "Traceback" not in r.output and "kappa " not in r.output
