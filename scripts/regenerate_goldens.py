"""Regenerate the committed golden set and its manifest: the one command.

    python scripts/regenerate_goldens.py

Run it only when the spec or the format changes (every regeneration stays in git
history). The committed set carries the backward (``grad=True``: spec section 10) and the stage
data (``stages=True``: format 5 leaves it out by default) and the inference block
(``inference=True``: spec section 12).
SOURCE_DATE_EPOCH is pinned so that the same environment (constraints.txt, the same XLA CPU
target as recorded in ``environment.xla_target``) reproduces byte-identical files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
SOURCE_DATE_EPOCH = "1796515200"  # 2026-12-06T00:00:00Z, spec 7.0.0 (format 6)
PRESETS = ("default",)


def main() -> int:
    os.environ["SOURCE_DATE_EPOCH"] = SOURCE_DATE_EPOCH
    from resblock.generator.grid import preset_cases
    from resblock.generator.run import generate
    from resblock.golden.manifest import REGENERATE, manifest_entry
    from resblock.schemas import validate
    from resblock.spec.constants import FORMAT_VERSION, SPEC_VERSION

    files = []
    for preset in PRESETS:
        path = GOLDEN / f"{preset}.h5"
        cases = preset_cases(preset)
        print(f"generating {len(cases)} cases -> {path}", file=sys.stderr)
        # The committed set keeps its stage data (a few MB): diagnosis reads it.
        meta = generate(cases, path, preset=preset, force=True, device="cpu", grad=True,
                        stages=True, inference=True)
        files.append(manifest_entry(path, preset, meta))
    manifest = {"format_version": FORMAT_VERSION, "spec_version": SPEC_VERSION,
                "regenerate": REGENERATE, "files": files}
    validate(manifest, "golden-manifest", where="golden/MANIFEST.json")
    (GOLDEN / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    for f in files:
        print(f"{f['path']}: {f['cases']} cases, {f['bytes']} bytes, sha256 {f['file_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
