"""Filesystem confinement of the worker with Landlock (Linux 5.13+), for the graders' mode.

Defence in depth: in the graders' mode no answer exists while the implementation runs
(``resblock.conformance.judging.secret``); confinement also keeps the implementation from
writing outside a private temporary folder, from reading files outside the interpreter's
and its own import paths, and (Landlock's scoping) from tracing or reading the memory of
the checker, which is outside its domain.

The raw system calls through ctypes (no dependency): ``landlock_create_ruleset``,
``landlock_add_rule``, ``landlock_restrict_self`` after ``PR_SET_NO_NEW_PRIVS``. Applied
by the worker to itself before it imports the target; irreversible for that process and
its children. Where Landlock is missing (another OS, an older kernel, a kernel built
without it) :func:`confine` changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
import sys

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # all Linux arches
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_ALL = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | _TRUNCATE | _IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR

# Read-only system folders an interpreter and its libraries load from.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt",
               "/nix", "/gnu")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/shm")


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """Landlock's ABI version, or 0 where it is not available."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        v = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(v), 0)


def handled_rights(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows: all of them are denied unless a rule
    allows them."""
    rights = _ABI1_ALL
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def read_paths(extra=()) -> list[str]:
    """Folders the worker may read: the interpreter's prefixes, ``sys.path``, the system
    folders, and ``extra`` (the implementation's folder)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path, *SYSTEM_READ, *extra]
    out, seen = [], set()
    for p in paths:
        p = os.path.realpath(p or os.getcwd())
        if p not in seen and os.path.exists(p):
            seen.add(p)
            out.append(p)
    return out


def without(paths, hidden) -> list[str]:
    """``paths`` with the folders ``hidden`` cut out: a tree that holds one is replaced by
    its other entries (recursively), and a hidden folder keeps only its ``.py`` files (the
    kit's ``golden`` package stays importable, its data files unreadable)."""
    hidden = [os.path.realpath(h) for h in hidden]
    out: list[str] = []

    def holds(tree: str, h: str) -> bool:
        return h == tree or h.startswith(tree.rstrip("/") + "/")

    def add(tree: str) -> None:
        inside = [h for h in hidden if holds(tree, h)]
        if not inside:
            out.append(tree)
            return
        try:
            names = sorted(os.listdir(tree))
        except OSError:
            return
        for name in names:
            child = os.path.join(tree, name)
            if child in hidden:
                out.extend(os.path.join(child, f) for f in sorted(os.listdir(child))
                           if f.endswith(".py"))
            elif os.path.isdir(child) and not os.path.islink(child):
                add(child)
            else:
                out.append(child)

    for p in paths:
        add(p)
    return out


def confine(write_dir: str, extra_read=(), hidden=()) -> str:
    """Restrict this process: read (and execute) :func:`read_paths` less the ``hidden``
    folders (:func:`without`), read and write ``write_dir`` and the harmless devices,
    nothing else. Returns what is in force, in words, for the verdict."""
    abi = abi_version()
    if abi < 1:
        return "no filesystem confinement (Landlock is not available on this system)"
    libc = _libc()
    handled = handled_rights(abi)
    attr = ctypes.c_uint64(handled)
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8),
                      ctypes.c_uint32(0))
    if fd < 0:
        return f"no filesystem confinement (landlock_create_ruleset: {_errno()})"
    try:
        reads = without(read_paths(extra_read), hidden)
        for path in reads:
            _allow(libc, fd, path, READ & handled)
        for path in hidden:  # listed (an import looks for its modules), not read
            if os.path.isdir(path):
                _allow(libc, fd, os.path.realpath(path), READ_DIR & handled)
        for path in DEVICES:
            if os.path.exists(path):
                _allow(libc, fd, path, (READ_FILE | WRITE_FILE | READ_DIR) & handled)
        _allow(libc, fd, write_dir, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"no filesystem confinement (PR_SET_NO_NEW_PRIVS: {_errno()})"
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            return f"no filesystem confinement (landlock_restrict_self: {_errno()})"
    finally:
        os.close(fd)
    return (f"Landlock ABI {abi}: reads limited to the interpreter, its import paths and "
            f"system folders ({len(reads)} rules), the kit's golden files unreadable, "
            "writes to a private temporary folder")


def _allow(libc, ruleset_fd: int, path: str, rights: int) -> None:
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, pfd)
        libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd),
                     ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(pfd)


def _errno() -> str:
    e = ctypes.get_errno()
    return f"{os.strerror(e)} (errno {e})"
