"""The checkout's top-level ``resblock/`` folder does not hide the kit's subpackages
(issue 12): a process started from the repository root imports ``resblock`` from that
folder, whatever is installed (a wheel, an editable install, nothing), and must still
find ``resblock.spec``, ``resblock.golden``, ... there."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_subpackages_import_from_the_repository_root_without_an_install():
    # -S: no site processing, so no editable-install finder; only NumPy and friends on
    # the path, as a non-editable install would leave it (minus the kit itself).
    code = ("import sys\n"
            f"sys.path[1:1] = {site.getsitepackages()!r}\n"
            "import resblock.spec.constants, resblock.golden.reader\n"
            "import resblock.conformance.judging.runner\n"
            "print(resblock.spec.constants.__file__)\n")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(REPO / "spec" / "constants.py")
