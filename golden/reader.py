"""Open and validate golden files; every problem names the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from resblock.errors import GoldenFormatError, GridError
from resblock.spec.cases import Case
from resblock.spec.constants import FORMAT_VERSION


def open_golden(path) -> GoldenFile:
    return GoldenFile(path)


class GoldenFile:
    """A validated golden file. Structure and schema are checked on open; hashes by
    :meth:`hash_problems` (``resblock verify`` and ``resblock check`` both call it)."""

    cache_bytes = 256 * 2**20  # arrays kept in memory across calls (at least one group)

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise GoldenFormatError(f"{self.path}: no such golden file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise GoldenFormatError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}. "
                "Restore it from git or regenerate it with `resblock generate`."
            ) from None
        try:
            self.metadata = self._read_metadata()
            self._check_structure()
        except GoldenFormatError:
            self._f.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            self._f.close()
            raise GoldenFormatError(f"{self.path}: damaged HDF5 structure ({type(e).__name__}: "
                                    f"{e}); restore it from git or regenerate it") from None
        self.entries = self.metadata["cases"]
        self._by_id = {e["id"]: e for e in self.entries}
        self._cache: dict[str, dict] = {}

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

    def _read_metadata(self) -> dict:
        from resblock.schemas import errors

        if "metadata" not in self._f:
            self._fail("no /metadata dataset; this is not a resblock golden file")
        raw = self._f["metadata"][()]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            self._fail(f"/metadata is not valid JSON ({e}); the file was edited or damaged")
        version = meta.get("format_version", "?") if isinstance(meta, dict) else "?"
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
        from resblock.golden.store import CASE_ARRAYS, expected_dtype, expected_shape

        groups = {g["name"]: g for g in self.metadata["groups"]}
        for g in groups.values():
            path = f"groups/{g['name']}"
            grp = self._f.get(path)
            if grp is None:
                self._fail(f"group /{path} listed in metadata is missing")
            for name in CASE_ARRAYS:
                ds = grp.get(name)
                if ds is None:
                    self._fail(f"dataset /{path}/{name} is missing")
                want = (g["size"],) + expected_shape(name, g["n"], g["h"], g["w"], g["features"])
                if ds.shape != want or ds.dtype != expected_dtype(name):
                    self._fail(f"/{path}/{name} has shape {ds.shape} dtype {ds.dtype}; "
                               f"expected {want} {expected_dtype(name)}")
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
        from resblock.golden.store import CASE_ARRAYS, case_sha256, content_sha256, index_fields

        problems = []
        for e in self.entries:
            arrays = self._group_arrays(e["group"])
            got = case_sha256(e["id"], {k: arrays[k][e["row"]] for k in CASE_ARRAYS},
                              index_fields(e))
            if got != e["sha256"]:
                problems.append(f"case {e['id']}: content hash mismatch (data was modified)")
        if content_sha256(self.entries) != self.metadata["content_sha256"]:
            problems.append("file content hash does not match its case index")
        return problems

    # -- access -------------------------------------------------------------------
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
        from resblock.golden.store import CASE_ARRAYS

        arrays = self._cache.get(group)
        if arrays is None:
            try:
                g = self._f[f"groups/{group}"]
                arrays = {name: g[name][()] for name in CASE_ARRAYS}
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
