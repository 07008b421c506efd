"""What a golden-file reader refuses before it reads a byte (issue 12): anything but a
regular file, links (external, soft, user-defined), and datasets that are not plain data
stored in the file itself (virtual, external raw storage, unknown filters) or that
declare more bytes than they store. Each refusal is one line naming the file."""

from __future__ import annotations

import math
import os
import stat

from resblock.errors import GoldenFormatError

# HDF5's own filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset): anything else
# needs a plugin, which would run foreign code on read.
KNOWN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})  # and LZF, built into h5py
MAX_COMPRESSION = 100  # declared bytes per stored byte of a filtered dataset (zip bombs)


def _fail(where, what: str):
    raise GoldenFormatError(f"{where}: {what}")


def regular_file_size(path) -> int:
    """The size of ``path``, refusing what is not a regular file (a folder, a FIFO that
    would hang the reader, a device)."""
    try:
        st = os.stat(path)
    except OSError:
        raise GoldenFormatError(f"{path}: no such golden file") from None
    if stat.S_ISDIR(st.st_mode):
        raise GoldenFormatError(f"{path}: no such golden file (that is a folder)")
    if not stat.S_ISREG(st.st_mode):
        raise GoldenFormatError(f"{path}: not a regular file (a FIFO or a device); "
                                "a golden file is a plain HDF5 file")
    return st.st_size


def hard_links(f, where) -> set[bytes]:
    """The path of every object of the open h5py file ``f``, having checked that each is
    reached by a hard link: no external link (data in, or a hang on, another file), no
    soft link. Walks the link table without following links."""
    import h5py

    bad = []
    links = set()

    def visit(name, info):
        if info.type != h5py.h5l.TYPE_HARD:
            bad.append(name.decode("utf-8", "replace"))
            return 1  # stop
        links.add(name)
        return None

    f.id.links.visit(visit, info=True)
    if bad:
        link = f.get(bad[0], getlink=True)
        what = (f"an external link to {link.filename}:{link.path}"
                if isinstance(link, h5py.ExternalLink) else
                f"a soft link to {link.path}" if isinstance(link, h5py.SoftLink) else
                "a user-defined link")
        _fail(where, f"/{bad[0]} is {what}; a golden file holds all its data itself "
                     "(refusing to follow links)")
    return links


def checked_dataset(f, where, file_size: int, path: str, want_shape: tuple | None = None,
                    want_type=None, loc=None, name: str | None = None, expected: str = ""):
    """The dataset at ``path`` of the open h5py file ``f`` (``file_size`` bytes on disk;
    ``where`` names it in messages), as a low-level ``DatasetID`` (opened as ``name`` relative
    to the group ``loc`` when given, which is faster), checked before a byte of it is
    read: a dataset (not a group), stored in this file (not virtual, no external raw
    storage), no unknown filter, and as many stored bytes as it declares (so a forged
    size cannot make a reader allocate gigabytes). A shape other than ``want_shape``
    or a type other than ``want_type`` (an HDF5 type) is returned for the caller to
    describe."""
    import h5py

    try:
        ds = (h5py.h5o.open(f.id, path.encode("utf-8")) if loc is None
              else h5py.h5o.open(loc, name.encode("utf-8")))
    except KeyError:
        _fail(where, f"dataset /{path} is missing")
    if not isinstance(ds, h5py.h5d.DatasetID):
        kind = "group" if isinstance(ds, h5py.h5g.GroupID) else "named datatype"
        _fail(where, f"/{path} is a {kind} where a dataset is expected")
    shape = ds.shape
    tid = ds.get_type()
    if (want_shape is not None and shape != want_shape) or \
            (want_type is not None and not tid.equal(want_type)):
        _fail(where, f"/{path} has shape {shape} dtype {ds.dtype}; expected {expected}")
    offset = ds.get_offset()  # None unless contiguous raw data in this file
    if offset is not None and want_type is not None:
        # What the writer makes: no filter, no link to elsewhere; one cheap check.
        declared = math.prod(shape) * tid.get_size()
        if ds.get_storage_size() == declared and offset + declared <= file_size:
            return ds
    dcpl = ds.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        _fail(where, f"/{path} is a virtual dataset (its data lives in other files); "
                     "refusing to read it")
    if dcpl.get_external_count():
        ext = dcpl.get_external(0)[0].decode("utf-8", "replace")
        _fail(where, f"/{path} keeps its data in the external file {ext!r}; refusing to "
                     "read it")
    n_filters = dcpl.get_nfilters()
    unknown = [flt for flt in (dcpl.get_filter(i)[0] for i in range(n_filters))
               if flt not in KNOWN_FILTERS]
    if unknown:
        _fail(where, f"/{path} uses the unknown HDF5 filter {unknown[0]} (a plugin); golden "
                     "files use HDF5's built-in filters only")
    if want_type is None and tid.get_class() == h5py.h5t.STRING and tid.is_variable_str():
        return ds  # variable-length strings live in the heap: bounded after reading
    declared = math.prod(shape) * tid.get_size()
    stored = ds.get_storage_size()
    if stored > file_size or (not n_filters and stored != declared) or \
            declared > MAX_COMPRESSION * max(stored, 1):
        _fail(where, f"/{path} declares {ds.shape} {ds.dtype} ({declared} bytes) but stores "
                     f"{stored} bytes in a {file_size}-byte file; the file is damaged "
                     "or forged")
    return ds
