"""Write golden files (DESIGN section 3): group by group into a temporary file, sealed
and validated, then published atomically; full disks, signals and concurrent writers
leave no partial file and replace nothing without ``--force``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from resblock.errors import GoldenFormatError
from resblock.golden.store import (
    CASE_ARRAYS,
    GRAD_ARRAYS,
    GoldenCase,
    content_sha256,
    expected_dtype,
    expected_shape,
    group_arrays,
    seal,
    storage_options,
)
from resblock.spec.cases import Case


class GoldenWriter:
    """Write a golden file group by group to a temporary file, then rename atomically.

    An interrupted run leaves no partial golden at ``path`` (the temporary file is
    removed on error; a killed process leaves only a dot-prefixed ``.tmp`` file).
    """

    def __init__(self, path, *, force: bool = False):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise GoldenFormatError(
                f"{self.path} already exists; refusing to overwrite a golden file. "
                "Pass --force to replace it, or choose another output path."
            )
        self.force = force
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        _remove_stale_tmp(self.path)
        self.entries: list[dict] = []
        self.groups: list[dict] = []
        self._f = None

    def __enter__(self):
        import h5py

        check_output_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = h5py.File(self.tmp, "w", track_order=False)
        except OSError as e:
            self._remove_tmp()
            raise GoldenFormatError(f"cannot write {self.path}: {os_reason(e)}") from None
        except BaseException:  # a signal while creating it: __exit__ will not run
            if self._f is not None:
                self._f.close()
                self._f = None
            self._remove_tmp()
            raise
        return self

    def write_group(self, cases: list[Case], arrays: dict[str, np.ndarray], extras: list[dict]):
        """Write one shape group: ``arrays`` maps CASE_ARRAYS names to stacked arrays."""
        first = cases[0]
        n, h, w, f = first.n, first.h, first.w, first.features
        names = group_arrays(arrays)
        missing = set(names) - set(arrays)
        if missing:
            raise GoldenFormatError(f"group {first.group}: missing arrays {sorted(missing)}")
        self._check_space(sum(np.asarray(arrays[k]).nbytes for k in names))
        g = self._f.create_group(f"groups/{first.group}")
        g.create_dataset(
            "case_ids", data=np.array([c.id for c in cases], dtype=object),
            dtype=_str_dtype(), track_times=False,
        )
        for name in names:
            a = np.ascontiguousarray(arrays[name], dtype=expected_dtype(name))
            want = (len(cases),) + expected_shape(name, n, h, w, f)
            if a.shape != want:
                raise GoldenFormatError(f"{first.group}/{name}: shape {a.shape}, expected {want}")
            _create(g, name, a)
        for row, (case, extra) in enumerate(zip(cases, extras, strict=True)):
            entry = {"id": case.id, **case.to_dict(), "group": case.group, "row": row, **extra}
            self.entries.append(seal(entry, {k: arrays[k][row] for k in names}))
        self.groups.append(
            {"name": first.group, "n": n, "h": h, "w": w, "features": f, "size": len(cases)}
        )

    def copy_group(self, cases: list[Case], rows: list[GoldenCase]) -> None:
        """Write stored cases (read from another golden file) as one shape group."""
        arrays = {k: np.stack([r.arrays[k] for r in rows]) for k in group_arrays(rows[0].arrays)}
        # Every index field but those the case id and its place determine: kappa,
        # ref_score and whatever else the generator recorded travel with the case.
        own = ("id", "group", "row", "sha256", "parts")
        extras = [{k: v for k, v in r.entry.items() if k not in own and k not in
                   r.case.to_dict()} for r in rows]
        self.write_group(cases, arrays, extras)

    def finish(self, metadata: dict) -> dict:
        """Complete the metadata (groups, cases, content hash), validate, write, rename."""
        from resblock.schemas import validate

        # The index is in group order whatever order groups were written in (parallel
        # writers finish in any order), so the content hash depends on content alone.
        self.groups.sort(key=lambda g: g["name"])
        self.entries.sort(key=lambda e: (e["group"], e["row"]))
        meta = dict(metadata, groups=self.groups, cases=self.entries,
                    content_sha256=content_sha256(self.entries))
        validate(meta, "golden-metadata", where=f"metadata for {self.path}")
        text = json.dumps(meta, indent=1, sort_keys=True)
        self._check_space(len(text.encode("utf-8")))
        self._f.attrs["format_version"] = meta["format_version"]
        self._f.attrs["spec_version"] = meta["spec_version"]
        self._f.create_dataset("metadata", data=text, dtype=_str_dtype(), track_times=False)
        self._f.close()
        self._f = None
        publish(self.tmp, self.path, force=self.force)
        return meta

    def _check_space(self, nbytes: int) -> None:
        """Refuse a write that cannot fit (free space, the file size limit) before HDF5
        hits the wall: HDF5 reports failed writes late, as printed warnings, and can
        crash while closing such a file, so a full disk must be seen coming."""
        import resource

        st = os.statvfs(self.tmp.parent)
        free = st.f_bavail * st.f_frsize
        size = self.tmp.stat().st_size if self.tmp.exists() else 0
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        room = free if limit == resource.RLIM_INFINITY else min(free, limit - size)
        need = (nbytes + nbytes // 10 + 2048 * len(CASE_ARRAYS + GRAD_ARRAYS)
                + 2**16)  # and HDF5's headers
        if need > room:
            raise GoldenFormatError(
                f"cannot write {self.path}: the next write needs about {need / 1e6:.2f} "
                f"MB and only {max(room, 0) / 1e6:.2f} MB can be written there (free disk "
                "space or file size limit); free some space or choose another output path")

    def _remove_tmp(self):
        try:
            self.tmp.unlink()
        except OSError:  # never created (no folder, a file in the way)
            pass

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._f is not None:
                if exc is not None:
                    self._discard_writes()
                self._f.close()
                self._f = None
        except Exception:  # noqa: BLE001 - closing a file on a full disk fails again
            self._f = None
        finally:
            self._remove_tmp()
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError)  # disk full, quota
                                        and "write failed" in str(exc)):
            raise GoldenFormatError(f"writing {self.path} failed: {os_reason(exc)}; the "
                                    "temporary file was removed") from None
        return False

    def _discard_writes(self):
        """Point HDF5's file descriptor at /dev/null: the file is abandoned, and closing it
        must not retry writes that fail (HDF5 can crash closing a file on a full disk)."""
        try:
            fd = self._f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _create(g, name: str, a: np.ndarray) -> None:
    """Store stacked array ``a`` as dataset ``name`` of group ``g``, compressed where the
    format says so (:func:`~resblock.golden.store.storage_options`). A reader refuses a
    dataset that declares over MAX_COMPRESSION times the bytes it stores (a compression
    bomb), so an array that compresses that well (all zeros: a zero-init residual's
    stages) is stored uncompressed instead.

    Compressed chunks are made here, on every core (:func:`deflate_chunks`), and handed
    to HDF5 as they are (``write_direct_chunk``): the bytes HDF5's own shuffle and
    deflate filters make, read back by any HDF5 reader; deflate of a real-size case's
    arrays was a quarter of its generation time on one core."""
    from resblock.golden.safety import MAX_COMPRESSION

    opts = storage_options(name, a.shape[1:], a.dtype)
    if not opts:
        g.create_dataset(name, data=a, track_times=False)
        return
    chunks = deflate_chunks(a, opts["chunks"], opts["compression_opts"], opts["shuffle"])
    if a.nbytes > (MAX_COMPRESSION // 2) * max(sum(len(c) for _, c in chunks), 1):
        g.create_dataset(name, data=a, track_times=False)
        return
    ds = g.create_dataset(name, shape=a.shape, dtype=a.dtype, track_times=False, **opts)
    for offset, data in chunks:
        ds.id.write_direct_chunk(offset, data)


def deflate_chunks(a: np.ndarray, chunk: tuple, level: int, shuffle: bool) -> list:
    """``[(offset, bytes)]``: every chunk of ``a`` (chunks that tile it exactly) through
    HDF5's shuffle filter (bytes regrouped by significance) when ``shuffle``, then its
    deflate filter (a zlib stream at ``level``: :func:`deflater`), compressed in threads
    (the compressors release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    compress = deflater(level)

    if any(n % c for n, c in zip(a.shape, chunk, strict=True)):
        raise ValueError(f"chunks {chunk} do not tile shape {a.shape}")
    size = a.dtype.itemsize
    offsets = [tuple(i * c for i, c in zip(idx, chunk, strict=True))
               for idx in np.ndindex(*(n // c for n, c in zip(a.shape, chunk, strict=True)))]

    def one(offset):
        block = np.ascontiguousarray(a[tuple(slice(o, o + c) for o, c in
                                             zip(offset, chunk, strict=True))])
        raw = block.view(np.uint8).reshape(-1, size).T.tobytes() if shuffle and size > 1 \
            else block.tobytes()
        return offset, compress(raw)

    workers = min(len(offsets), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else (os.cpu_count() or 1))
    if workers <= 1:
        return [one(o) for o in offsets]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, offsets))


def deflater(level: int):
    """``bytes -> zlib stream`` at ``level``: ISA-L's (the ``isal`` package, installed
    with the generator's extra) for levels 0-3, else zlib's. Any inflate reads either
    (HDF5's deflate filter is zlib's inflate). Measured on a 32x56x56x64 case's seven
    compressed arrays (206 MB): zlib level 1 5.1 s for 145.1 MB, ISA-L level 1 0.6 s
    for 144.7 MB (zlib-ng level 1: 2.0 s, 156.9 MB)."""
    import functools
    import zlib

    if level <= 3:
        try:
            from isal import isal_zlib
        except ImportError:
            pass
        else:
            return functools.partial(isal_zlib.compress, level=level)
    return functools.partial(zlib.compress, level=level)


def os_reason(e: OSError) -> str:
    """The one-line reason of an OSError (h5py's messages carry HDF5's error stack)."""
    if getattr(e, "errno", None) is not None and getattr(e, "strerror", None):
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror}{where}"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    import re

    m = re.search(r"errno = (\d+)", text)
    return os.strerror(int(m.group(1))) if m else text


def _remove_stale_tmp(path: Path) -> None:
    """Remove the temporary files of writers of ``path`` that died (SIGKILL, a crash in
    HDF5): ``.NAME.tmp-PID`` whose process no longer exists."""
    import glob

    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:  # alive, someone else's
            pass


def check_output_path(path) -> None:
    """Refuse, before any work, an output whose folder cannot exist: the nearest existing
    ancestor is a file (``-o notes.txt/out.h5``), or ``path`` itself is a folder; and an
    output that exists as something other than a regular file or a link (a device such
    as ``/dev/null``, a FIFO, a socket), which the atomic rename would replace, even
    with ``--force``."""
    path = Path(path).absolute()
    if path.is_dir():
        raise GoldenFormatError(f"cannot write {path}: it is a folder; give a file name")
    _refuse_special(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GoldenFormatError(f"cannot write {path}: {parent} is a file, not a "
                                        "folder")
            return


def _refuse_special(path: Path) -> None:
    """Refuse ``path`` if it exists as a device, FIFO or socket (not followed: a link is
    itself replaced, never its target)."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # absent (or unreadable: the write itself will say so)
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise GoldenFormatError(
            f"cannot write {path}: it exists and is not a regular file (a device, FIFO or "
            "socket); refusing to replace it, even with --force. Give a file name.")


def publish(tmp: Path, path: Path, *, force: bool) -> None:
    """Move a finished temporary file to ``path``. Without ``force`` the move is
    exclusive: if another process created ``path`` meanwhile (two writers started before
    either finished), this one fails instead of silently replacing that file. A device,
    FIFO or socket at ``path`` is never replaced (:func:`check_output_path`)."""
    _refuse_special(path)
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise GoldenFormatError(
            f"{path} was created by another process while this one was writing; refusing "
            "to replace it. Pass --force to replace it, or choose another output path."
        ) from None
    except OSError:  # a file system without hard links: reserve the name, then replace
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise GoldenFormatError(
                f"{path} was created by another process while this one was writing; "
                "refusing to replace it. Pass --force to replace it.") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")
