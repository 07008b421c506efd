"""Print, or write into spec/DESIGN.md, the coverage table of the committed golden set.

    python scripts/coverage_table.py            # print the table
    python scripts/coverage_table.py --write    # rewrite the marked block of DESIGN.md

The table is ``resblock coverage --markdown --zoo none`` on the committed set (every
pitfall twin, every profile); tests/spec/test_design_tables.py fails when DESIGN.md's
block differs from it, so the document cannot drift from the goldens.
"""

from __future__ import annotations

import sys
from pathlib import Path

DESIGN = Path(__file__).resolve().parent.parent / "spec" / "DESIGN.md"
BLOCK = "coverage"


def table() -> str:
    from resblock.conformance.mistakes.coverage import coverage, markdown_table
    from resblock.golden.cli import default_goldens

    return markdown_table(coverage(default_goldens(), zoo_names=()))


def block_of(text: str) -> str:
    from resblock.spec.docblocks import block

    return block(text, BLOCK)


def main(argv) -> int:
    t = table()
    if "--write" not in argv:
        print(t)
        return 0
    from resblock.spec.docblocks import write_block

    write_block(DESIGN, BLOCK, t)
    print(f"wrote the coverage table into {DESIGN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
