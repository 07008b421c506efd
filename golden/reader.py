"""Open and validate golden files; every problem names the file and what is wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resblock.errors import GoldenFormatError, GridError
from resblock.golden.safety import checked_dataset, hard_links, regular_file_size
from resblock.spec.cases import Case
from resblock.spec.constants import FORMAT_VERSION

METADATA_MAX_BYTES = 64 * 2**20  # /metadata is JSON text: a few hundred kB per 1000 cases
# Format 2 sealed each case with one hash over all its arrays; format 3 with a digest per
# part (forward, stages, gradients), so that a check reads and hashes only what it uses;
# format 5 may leave the stages out and compresses large arrays (HDF5 deflate).
READABLE_MAJORS = ("2", "3", "4", "5", "6")


def open_golden(path) -> GoldenFile:
    return GoldenFile(path)


class GoldenFile:
    """A validated golden file. Schema, index and structure are checked on open; each
    part of a group (forward, stages, gradients) is checked, read and verified against
    its digests on first use (:meth:`part`); :meth:`hash_problems` verifies them all."""

    cache_bytes = 256 * 2**20  # arrays kept in memory across calls (at least one group)

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        self.file_size = regular_file_size(self.path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise GoldenFormatError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}. "
                "Restore it from git or regenerate it with `resblock generate`."
            ) from None
        try:
            self._links = hard_links(self._f, self.path)  # every path, for lookups
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

    def _dataset(self, path: str, want_shape: tuple | None = None, want_type=None,
                 loc=None, name: str | None = None, expected: str = ""):
        return checked_dataset(self._f, self.path, self.file_size, path, want_shape,
                               want_type, loc, name, expected)

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
        if ds.dtype.itemsize <= 16:  # a variable-length string: its length first
            declared = self._vlen_length(ds)
            if declared > METADATA_MAX_BYTES:
                self._fail(f"/metadata declares {declared} bytes, more than "
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
        if str(version).split(".")[0] == "1":
            self._fail(
                f"format version {version} predates the per-element error model: it has no "
                "budget/ datasets, so no bound can be applied to it. Regenerate it with this "
                "kit (`resblock generate` with the same grid; `resblock list FILE` shows it), "
                "or check against the committed goldens"
            )
        if str(version).split(".")[0] not in READABLE_MAJORS:
            self._fail(
                f"format version {version}, but this kit reads formats "
                f"{', '.join(m + '.x' for m in READABLE_MAJORS)} (it writes "
                f"{FORMAT_VERSION}); use a resblock release that matches the file, or "
                "regenerate it"
            )
        self.sealed_by_parts = str(version).split(".")[0] != "2"
        self.stages_optional = int(str(version).split(".")[0]) >= 5
        problems = errors(meta, "golden-metadata")
        if problems:
            self._fail("metadata does not validate against schema 'golden-metadata': "
                       + "; ".join(problems[:3]))
        return meta

    def _vlen_length(self, ds) -> int:
        """The length a scalar variable-length string dataset declares, read from its
        stored reference (a 4-byte length, then the global heap address) before the
        string itself is: h5py would read all of it to answer."""
        import struct

        import h5py

        offset = ds.get_offset()
        if ds.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS or offset is None \
                or ds.get_storage_size() < 4 or offset + 4 > self.file_size:
            self._fail("/metadata is a variable-length string whose length cannot be read "
                       "before the string (not contiguous storage); the kit never writes "
                       "such a file")
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return struct.unpack("<I", fh.read(4))[0]

    def _check_structure(self):
        """Groups, their case ids and the index, and that every dataset a group must
        hold is there. The datasets themselves (kind, shape, type, storage) are checked
        when a part is first read (:meth:`part`), before a byte of it is read."""
        import h5py

        from resblock.golden.store import (
            INFERENCE_STORE_MARKER,
            STAGES_MARKER,
            STORE_MARKER,
            group_arrays,
            group_parts,
        )

        self._names = {}  # group -> its array names (CASE_ARRAYS, and GRAD_ARRAYS if any)
        self._cache: dict[tuple, tuple] = {}  # (group, part) -> (arrays, hash problems)
        self._name_sets: dict[str, frozenset] = {}
        self._by_group: dict[str, list[dict]] = {}
        groups = {g["name"]: g for g in self.metadata["groups"]}
        for g in groups.values():
            path = f"groups/{g['name']}"
            shape_name = f"n{g['n']}_h{g['h']}_w{g['w']}_f{g['features']}"
            if g["name"] != shape_name:  # the shape every dataset of it is checked against
                self._fail(f"group {g['name']!r} is listed with the shape of {shape_name!r}; "
                           "the metadata was edited")
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
            have = tuple(n for n in ("grad/y_bar", "sigma/y", "inference/y", STORE_MARKER)
                         if f"{path}/{n.split('/')[0]}".encode() in self._links)
            # Format 5 made the stage data optional (a group has all of it or none);
            # before, every group must have it.
            if not self.stages_optional or f"{path}/oracle/stages".encode() in self._links:
                have += (STAGES_MARKER,)
            # The inference block's storage term is optional within format 6.0.0 (a file
            # written before it recomputes it: GoldenCase.inference_store_data).
            if f"{path}/{INFERENCE_STORE_MARKER}".encode() in self._links:
                have += (INFERENCE_STORE_MARKER,)
            names = group_arrays(have)
            missing = next((n for n in names if f"{path}/{n}".encode() not in self._links),
                           None)
            if missing is not None:
                self._fail(f"dataset /{path}/{missing} is missing")
            self._names[g["name"]] = names
            self._name_sets[g["name"]] = frozenset(names)
            self._by_group[g["name"]] = []
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
            if self.sealed_by_parts and \
                    sorted(e.get("parts", ())) != sorted(group_parts(self._names[e["group"]])):
                self._fail(f"index entry {e['id']!r} has digests for parts "
                           f"{sorted(e.get('parts', ()))}, but its group holds "
                           f"{list(group_parts(self._names[e['group']]))}; every part of a "
                           "case must be sealed")
            self._by_group[e["group"]].append(e)

    def _case_ids(self, group: str) -> list[str]:
        cache = self.__dict__.setdefault("_ids_cache", {})
        if group not in cache:
            raw = self._f[f"groups/{group}/case_ids"][()]
            cache[group] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        return cache[group]

    # -- parts and hashes -----------------------------------------------------------
    def parts(self, group: str) -> dict[str, tuple[str, ...]]:
        """The parts of ``group`` and their array names. A format-2 file has one part,
        "all", sealed by each case's single hash."""
        from resblock.golden.store import part_arrays

        names = self._names[group]
        if not self.sealed_by_parts:
            return {"all": names}
        return part_arrays(names)

    def part_of(self, group: str, name: str) -> str:
        from resblock.golden.store import part_of

        return part_of(name) if self.sealed_by_parts else "all"

    def index_problems(self) -> list[str]:
        """The hashes that need no array: each case hash over its index entry (format 3:
        the part digests included) and the file's content hash over the case hashes."""
        from resblock.golden.store import case_sha256, content_sha256, index_fields

        problems = []
        if self.sealed_by_parts:
            problems = [f"case {e['id']}: index hash mismatch (its index entry was modified)"
                        for e in self.entries
                        if case_sha256(e["id"], {}, index_fields(e)) != e["sha256"]]
        if content_sha256(self.entries) != self.metadata["content_sha256"]:
            problems.append("file content hash does not match its case index")
        return problems

    def hash_problems(self, parts=None) -> list[str]:
        """Recompute the hashes of the index and of ``parts`` (every part when None) of
        every group; describe each mismatch."""
        problems = self.index_problems()
        for group in self._names:
            for part in self._selected(group, parts):
                problems.extend(self.part(group, part, strict=False)[1])
        return problems

    def require(self, group: str, parts) -> None:
        """Read and verify ``parts`` of ``group`` now (a format-2 file's single part
        whatever is asked): raises :class:`GoldenFormatError` on a mismatch."""
        for part in self._selected(group, parts):
            self.part(group, part)

    def _selected(self, group: str, parts) -> list[str]:
        """The parts of ``group`` that hold ``parts`` (all when None)."""
        return [p for p in self.parts(group) if parts is None or p in parts or p == "all"]

    def part(self, group: str, part: str, strict: bool = True):
        """``(arrays, problems)``: the stacked arrays of one part of a group, each dataset
        checked before it is read, and the cases whose digest of the part does not match.
        With ``strict`` a mismatch raises :class:`GoldenFormatError` instead: data that
        fails its seal is never used."""
        hit = self._cache.get((group, part))
        if hit is None:
            if not self._f.id.valid:
                raise GoldenFormatError(
                    f"{self.path} was closed before the {part} arrays of group {group} "
                    "were read; a case reads its arrays from the open file (take "
                    "case.detached() before closing it)")
            names = self.parts(group)[part]
            arrays = self._read(group, names)
            hit = (arrays, self._seal_problems(group, part, arrays))
            # Keep parts resident up to a byte budget (evicting the oldest): a small file
            # is read once however often it is traversed; a huge one stays bounded.
            self._cache[(group, part)] = hit
            size = sum(a.nbytes for v in self._cache.values() for a in v[0].values())
            while size > self.cache_bytes and len(self._cache) > 1:
                oldest = next(iter(self._cache))
                size -= sum(a.nbytes for a in self._cache.pop(oldest)[0].values())
        if strict and hit[1]:
            raise GoldenFormatError(f"{self.path}: " + "; ".join(hit[1][:3])
                                    + ("" if len(hit[1]) <= 3 else
                                       f" (and {len(hit[1]) - 3} more)"))
        return hit

    def _seal_problems(self, group: str, part: str, arrays) -> list[str]:
        from resblock.golden.store import case_sha256, index_fields, part_sha256

        problems = []
        for e in self._by_group[group]:
            rows = {k: v[e["row"]] for k, v in arrays.items()}
            if part == "all":
                ok = case_sha256(e["id"], rows, index_fields(e)) == e["sha256"]
            else:
                ok = part_sha256(e["id"], part, rows) == e["parts"][part]
            if not ok:
                what = "" if part == "all" else f" of its {part} arrays"
                problems.append(f"case {e['id']}: content hash mismatch{what} (data was "
                                "modified)")
        return problems

    def _read(self, group: str, names) -> dict[str, np.ndarray]:
        import h5py

        from resblock.golden.store import expected_dtype, expected_shape

        types = {np.dtype("<f4"): h5py.h5t.IEEE_F32LE, np.dtype("<f8"): h5py.h5t.IEEE_F64LE}
        g = next(g for g in self.metadata["groups"] if g["name"] == group)
        path = f"groups/{group}"
        arrays = {}
        try:
            grp = h5py.h5o.open(self._f.id, path.encode("utf-8"))
            for name in names:
                dtype = expected_dtype(name)
                want = (g["size"],) + expected_shape(name, g["n"], g["h"], g["w"],
                                                     g["features"])
                ds = self._dataset(f"{path}/{name}", want, types[dtype], loc=grp, name=name,
                                   expected=f"{want} {dtype}")
                a = np.empty(want, dtype=dtype)
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, a)
                arrays[name] = a
        except GoldenFormatError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            raise GoldenFormatError(f"{self.path}: damaged data in group {group} "
                                    f"({type(e).__name__}: {e})") from None
        return arrays

    # -- access -------------------------------------------------------------------
    def group_has_grad(self, group: str) -> bool:
        """Whether shape group ``group`` stores the backward (format 2.1 gradients)."""
        from resblock.golden.store import GRAD_ARRAYS

        return GRAD_ARRAYS[0] in self._names[group]

    def group_has_inference(self, group: str) -> bool:
        """Whether shape group ``group`` stores the inference block (format 6)."""
        from resblock.golden.store import INFERENCE_MARKER

        return INFERENCE_MARKER in self._names[group]

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

    def case(self, case_id: str):
        from resblock.golden.store import GoldenCase

        e = self.entry(case_id)
        return GoldenCase(case=Case.from_id(case_id), entry=e, arrays=CaseArrays(self, e))

    def iter_cases(self, ids=None):
        """Yield GoldenCase objects in file order (group by group), optionally filtered."""
        wanted = None if ids is None else set(ids)
        order = sorted(self.entries, key=lambda e: (e["group"], e["row"]))
        for e in order:
            if wanted is None or e["id"] in wanted:
                yield self.case(e["id"])


class CaseArrays(Mapping):
    """The arrays of one stored case by name, each part read and its seal verified on
    first use (a forward check never reads the gradients)."""

    __slots__ = ("_file", "_group", "_row", "_names")

    def __init__(self, gf: GoldenFile, entry: dict):
        self._file, self._group, self._row = gf, entry["group"], entry["row"]
        self._names = gf._name_sets[self._group]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        part = self._file.part_of(self._group, name)
        return self._file.part(self._group, part)[0][name][self._row]

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._file._names[self._group])

    def __len__(self) -> int:
        return len(self._names)
