"""golden/MANIFEST.json: the committed golden files and their hashes."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from resblock.errors import GoldenFormatError

REGENERATE = "python scripts/regenerate_goldens.py"


def golden_dir() -> Path:
    return Path(str(resources.files("resblock.golden")))


def load_manifest(directory: Path | None = None) -> dict:
    from resblock.schemas import validate

    path = (directory or golden_dir()) / "MANIFEST.json"
    if not path.is_file():
        raise GoldenFormatError(f"{path}: the golden manifest is missing; run {REGENERATE}")
    data = json.loads(path.read_text("utf-8"))
    validate(data, "golden-manifest", where=str(path))
    return data


def committed_paths(directory: Path | None = None) -> list[Path]:
    d = directory or golden_dir()
    return [d / f["path"] for f in load_manifest(d)["files"]]


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_entry(path: Path, preset: str, meta: dict) -> dict:
    return {
        "path": path.name,
        "preset": preset,
        "cases": len(meta["cases"]),
        "bytes": path.stat().st_size,
        "file_sha256": file_sha256(path),
        "content_sha256": meta["content_sha256"],
    }


def manifest_problems(directory: Path | None = None) -> list[str]:
    """Each committed file exists and matches its manifest hashes."""
    d = directory or golden_dir()
    out = []
    for f in load_manifest(d)["files"]:
        p = d / f["path"]
        if not p.is_file():
            out.append(f"{p}: listed in MANIFEST.json but missing")
        elif file_sha256(p) != f["file_sha256"]:
            out.append(f"{p}: file SHA-256 differs from MANIFEST.json (edited or regenerated "
                       f"without updating the manifest; run {REGENERATE})")
    return out
