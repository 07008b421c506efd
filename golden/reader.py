"""Open and validate golden files; every problem names the file and what is wrong."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from resblock.errors import GoldenFormatError, GridError
from resblock.spec.cases import Case
from resblock.spec.constants import FORMAT_VERSION

METADATA_MAX_BYTES = 64 * 2**20  # /metadata is JSON text: a few hundred kB per 1000 cases
# HDF5's own filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset): anything else
# needs a plugin, which would run foreign code on read.
KNOWN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})  # and LZF, built into h5py
MAX_COMPRESSION = 100  # declared bytes per stored byte of a filtered dataset (zip bombs)


def open_golden(path) -> GoldenFile:
    return GoldenFile(path)


class GoldenFile:
    """A validated golden file. Structure and schema are checked on open; hashes by
    :meth:`hash_problems` (``resblock verify`` and ``resblock check`` both call it)."""

    cache_bytes = 256 * 2**20  # arrays kept in memory across calls (at least one group)

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        try:
            st = os.stat(self.path)
        except OSError:
            raise GoldenFormatError(f"{self.path}: no such golden file") from None
        if stat.S_ISDIR(st.st_mode):
            raise GoldenFormatError(f"{self.path}: no such golden file (that is a folder)")
        if not stat.S_ISREG(st.st_mode):
            raise GoldenFormatError(f"{self.path}: not a regular file (a FIFO or a device); "
                                    "a golden file is a plain HDF5 file")
        self.file_size = st.st_size
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise GoldenFormatError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}. "
                "Restore it from git or regenerate it with `resblock generate`."
            ) from None
        try:
            self._check_links()
            self.metadata = self._read_metadata()
            self._check_structure()
        except GoldenFormatError:
            self._f.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
                MemoryError) as e:
            self._f.close()
            raise GoldenFormatError(f"{self.path}: damaged HDF5 structure ({type(e).__name__}: "
                                    f"{e}); restore it from git or regenerate it") from None
        self.entries = self.metadata["cases"]
        self._by_id = {e["id"]: e for e in self.entries}

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- validation ---------------------------------------------------------------
    def _fail(self, what: str):
        raise GoldenFormatError(f"{self.path}: {what}")

    def _check_links(self):
        """Every object is reached by hard links: no external link (data in, or a hang
        on, another file), no soft link. Walks the link table without following links."""
        import h5py

        bad = []

        def visit(name, info):
            if info.type != h5py.h5l.TYPE_HARD:
                bad.append(name.decode("utf-8", "replace"))
                return 1  # stop
            return None

        self._f.id.links.visit(visit, info=True)
        if bad:
            link = self._f.get(bad[0], getlink=True)
            what = (f"an external link to {link.filename}:{link.path}"
                    if isinstance(link, h5py.ExternalLink) else
                    f"a soft link to {link.path}" if isinstance(link, h5py.SoftLink) else
                    "a user-defined link")
            self._fail(f"/{bad[0]} is {what}; a golden file holds all its data itself "
                       "(refusing to follow links)")

    def _dataset(self, path: str, want_shape: tuple | None = None, want_type=None,
                 loc=None, name: str | None = None, expected: str = ""):
        """The dataset at ``path`` (a low-level ``DatasetID``; opened as ``name`` relative
        to the group ``loc`` when given, which is faster), checked before a byte of it is
        read: a dataset (not a group), stored in this file (not virtual, no external raw
        storage), no unknown filter, and as many stored bytes as it declares (so a forged
        size cannot make a reader allocate gigabytes). A shape other than ``want_shape``
        or a type other than ``want_type`` (an HDF5 type) is returned for the caller to
        describe."""
        import h5py

        try:
            ds = (h5py.h5o.open(self._f.id, path.encode("utf-8")) if loc is None
                  else h5py.h5o.open(loc, name.encode("utf-8")))
        except KeyError:
            self._fail(f"dataset /{path} is missing")
        if not isinstance(ds, h5py.h5d.DatasetID):
            kind = "group" if isinstance(ds, h5py.h5g.GroupID) else "named datatype"
            self._fail(f"/{path} is a {kind} where a dataset is expected")
        shape = ds.shape
        tid = ds.get_type()
        if (want_shape is not None and shape != want_shape) or \
                (want_type is not None and not tid.equal(want_type)):
            self._fail(f"/{path} has shape {shape} dtype {ds.dtype}; expected {expected}")
        offset = ds.get_offset()  # None unless contiguous raw data in this file
        if offset is not None and want_type is not None:
            # What the writer makes: no filter, no link to elsewhere; one cheap check.
            declared = math.prod(shape) * tid.get_size()
            if ds.get_storage_size() == declared and offset + declared <= self.file_size:
                return ds
        dcpl = ds.get_create_plist()
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            self._fail(f"/{path} is a virtual dataset (its data lives in other files); "
                       "refusing to read it")
        if dcpl.get_external_count():
            ext = dcpl.get_external(0)[0].decode("utf-8", "replace")
            self._fail(f"/{path} keeps its data in the external file {ext!r}; refusing to "
                       "read it")
        n_filters = dcpl.get_nfilters()
        unknown = [f for f in (dcpl.get_filter(i)[0] for i in range(n_filters))
                   if f not in KNOWN_FILTERS]
        if unknown:
            self._fail(f"/{path} uses the unknown HDF5 filter {unknown[0]} (a plugin); golden "
                       "files use HDF5's built-in filters only")
        if want_type is None and tid.get_class() == h5py.h5t.STRING and tid.is_variable_str():
            return ds  # variable-length strings live in the heap: bounded after reading
        declared = math.prod(shape) * tid.get_size()
        stored = ds.get_storage_size()
        if stored > self.file_size or (not n_filters and stored != declared) or \
                declared > MAX_COMPRESSION * max(stored, 1):
            self._fail(f"/{path} declares {ds.shape} {ds.dtype} ({declared} bytes) but stores "
                       f"{stored} bytes in a {self.file_size}-byte file; the file is damaged "
                       "or forged")
        return ds

    def _read_metadata(self) -> dict:
        import h5py

        from resblock.schemas import errors

        if "metadata" not in self._f:
            self._fail("no /metadata dataset; this is not a resblock golden file")
        ds = self._dataset("metadata")
        if ds.shape != () or h5py.check_string_dtype(ds.dtype) is None:
            self._fail(f"/metadata is {ds.shape} {ds.dtype}; expected one string")
        if ds.dtype.itemsize > METADATA_MAX_BYTES:
            self._fail(f"/metadata declares {ds.dtype.itemsize} bytes, more than "
                       f"{METADATA_MAX_BYTES}; refusing to read it")
        raw = h5py.Dataset(ds)[()]
        if len(raw) > METADATA_MAX_BYTES:
            self._fail(f"/metadata holds {len(raw)} bytes, more than {METADATA_MAX_BYTES}")
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            self._fail(f"/metadata is not valid JSON ({e}); the file was edited or damaged")
        version = meta.get("format_version", "?") if isinstance(meta, dict) else "?"
        if str(version).split(".")[0] == "1" and FORMAT_VERSION.split(".")[0] == "2":
            self._fail(
                f"format version {version} predates the per-element error model: it has no "
                "budget/ datasets, so no bound can be applied to it. Regenerate it with this "
                "kit (`resblock generate` with the same grid; `resblock list FILE` shows it), "
                "or check against the committed goldens"
            )
        if str(version).split(".")[0] != FORMAT_VERSION.split(".")[0]:
            self._fail(
                f"format version {version}, but this kit reads format {FORMAT_VERSION}; "
                "use a resblock release that matches the file, or regenerate it"
            )
        problems = errors(meta, "golden-metadata")
        if problems:
            self._fail("metadata does not validate against schema 'golden-metadata': "
                       + "; ".join(problems[:3]))
        return meta

    def _check_structure(self):
        import h5py

        from resblock.golden.store import expected_dtype, expected_shape, group_arrays

        types = {np.dtype("<f4"): h5py.h5t.IEEE_F32LE, np.dtype("<f8"): h5py.h5t.IEEE_F64LE}
        self._datasets = {}  # (group, array name) -> the checked DatasetID (not yet read)
        self._names = {}  # group -> its array names (CASE_ARRAYS, and GRAD_ARRAYS if any)
        self._cache: dict[str, dict] = {}
        eager = 0  # bytes read while checking: a file within the cache budget is read in
        # the same pass (each dataset opened once; hashing needs every byte anyway)
        groups = {g["name"]: g for g in self.metadata["groups"]}
        for g in groups.values():
            path = f"groups/{g['name']}"
            try:
                grp = h5py.h5o.open(self._f.id, path.encode("utf-8"))
            except KeyError:
                self._fail(f"group /{path} listed in metadata is missing")
            if not isinstance(grp, h5py.h5g.GroupID):
                self._fail(f"/{path} is a dataset where a group is expected")
            ids = self._dataset(f"{path}/case_ids", (g["size"],), loc=grp, name="case_ids",
                                expected=f"({g['size']},) strings")
            if h5py.check_string_dtype(ids.dtype) is None:
                self._fail(f"/{path}/case_ids is {ids.shape} {ids.dtype}; expected "
                           f"({g['size']},) strings")
            names = group_arrays(("grad/y_bar",) if grp.links.exists(b"grad") else ())
            self._names[g["name"]] = names
            arrays: dict[str, np.ndarray] = {}
            shapes = {name: (g["size"],) + expected_shape(name, g["n"], g["h"], g["w"],
                                                          g["features"]) for name in names}
            size = sum(math.prod(shapes[n]) * expected_dtype(n).itemsize for n in names)
            read_now = eager + size <= self.cache_bytes
            eager += size if read_now else 0
            for name in names:
                want = shapes[name]
                want_type = types[expected_dtype(name)]
                ds = self._dataset(f"{path}/{name}", want, want_type, loc=grp, name=name,
                                   expected=f"{want} {expected_dtype(name)}")
                if read_now:
                    a = np.empty(want, dtype=expected_dtype(name))
                    ds.read(h5py.h5s.ALL, h5py.h5s.ALL, a)
                    arrays[name] = a
                else:  # past the budget: read when needed, through the checked ID
                    self._datasets[(g["name"], name)] = ds
            if read_now:
                self._cache[g["name"]] = arrays
        seen = set()
        for e in self.metadata["cases"]:
            if e["id"] in seen:
                self._fail(f"duplicate case id {e['id']!r} in the index")
            seen.add(e["id"])
            try:
                case = Case.from_id(e["id"])
            except GridError as err:
                self._fail(str(err))
            if case.to_dict() != {k: e[k] for k in case.to_dict()} or case.group != e["group"]:
                self._fail(f"index entry {e['id']!r} disagrees with the fields its id encodes")
            g = groups.get(e["group"])
            if g is None or not 0 <= e["row"] < g["size"]:
                self._fail(f"case {e['id']!r} points to a missing group/row")
            stored = self._case_ids(e["group"])[e["row"]]
            if stored != e["id"]:
                self._fail(f"/groups/{e['group']}/case_ids[{e['row']}] is {stored!r} but the "
                           f"index puts {e['id']!r} there")

    def _case_ids(self, group: str) -> list[str]:
        cache = self.__dict__.setdefault("_ids_cache", {})
        if group not in cache:
            raw = self._f[f"groups/{group}/case_ids"][()]
            cache[group] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        return cache[group]

    def hash_problems(self) -> list[str]:
        """Recompute every case hash and the content hash; describe each mismatch."""
        from resblock.golden.store import case_sha256, content_sha256, index_fields

        problems = []
        for e in self.entries:
            arrays = self._group_arrays(e["group"])
            got = case_sha256(e["id"], {k: arrays[k][e["row"]] for k in self._names[e["group"]]},
                              index_fields(e))
            if got != e["sha256"]:
                problems.append(f"case {e['id']}: content hash mismatch (data was modified)")
        if content_sha256(self.entries) != self.metadata["content_sha256"]:
            problems.append("file content hash does not match its case index")
        return problems

    # -- access -------------------------------------------------------------------
    def group_has_grad(self, group: str) -> bool:
        """Whether shape group ``group`` stores the backward (format 2.1 gradients)."""
        from resblock.golden.store import GRAD_ARRAYS

        return GRAD_ARRAYS[0] in self._names[group]

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def entry(self, case_id: str) -> dict:
        try:
            return self._by_id[case_id]
        except KeyError:
            raise GoldenFormatError(
                f"{self.path}: no case {case_id!r}; `resblock list {self.path}` shows the ids"
            ) from None

    def _group_arrays(self, group: str) -> dict[str, np.ndarray]:
        import h5py

        from resblock.golden.store import expected_dtype

        arrays = self._cache.get(group)
        if arrays is None:
            try:  # through the datasets checked on open: low-level reads, ~6x faster
                arrays = {}
                for name in self._names[group]:
                    ds = self._datasets.get((group, name))
                    if ds is None:  # read on open, then evicted: reopen (checked on open)
                        ds = h5py.h5o.open(self._f.id, f"groups/{group}/{name}".encode())
                    a = np.empty(ds.shape, dtype=expected_dtype(name))
                    ds.read(h5py.h5s.ALL, h5py.h5s.ALL, a)
                    arrays[name] = a
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                raise GoldenFormatError(f"{self.path}: damaged data in group {group} "
                                        f"({type(e).__name__}: {e})") from None
            # Keep groups resident up to a byte budget (evicting the oldest): a small file
            # is read once however often it is traversed; a huge one stays bounded.
            self._cache[group] = arrays
            size = sum(a.nbytes for v in self._cache.values() for a in v.values())
            while size > self.cache_bytes and len(self._cache) > 1:
                oldest = next(iter(self._cache))
                size -= sum(a.nbytes for a in self._cache.pop(oldest).values())
        return arrays

    def case(self, case_id: str):
        from resblock.golden.store import GoldenCase

        e = self.entry(case_id)
        arrays = self._group_arrays(e["group"])
        rows = {k: v[e["row"]] for k, v in arrays.items()}
        return GoldenCase(case=Case.from_id(case_id), entry=e, arrays=rows)

    def iter_cases(self, ids=None):
        """Yield GoldenCase objects in file order (group by group), optionally filtered."""
        wanted = None if ids is None else set(ids)
        order = sorted(self.entries, key=lambda e: (e["group"], e["row"]))
        for e in order:
            if wanted is None or e["id"] in wanted:
                yield self.case(e["id"])
