"""Generated blocks of the spec's documents: text between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` that a script writes (worked examples, the coverage table) and a
test compares with the script's output, so SPEC.md and DESIGN.md cannot drift."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def block(text: str, name: str) -> str:
    """The text between the markers of ``name`` (without the markers)."""
    begin, end = markers(name)
    return text[text.index(begin) + len(begin):text.index(end)].strip("\n")


def write_block(path, name: str, body: str) -> None:
    """Replace the block ``name`` of the document at ``path`` with ``body``."""
    path = Path(path)
    text = path.read_text("utf-8")
    begin, end = markers(name)
    i, j = text.index(begin) + len(begin), text.index(end)
    path.write_text(text[:i] + "\n" + body + "\n" + text[j:], "utf-8")


def vector(a) -> str:
    """A vector as the worked examples print it: 7 significant digits."""
    import numpy as np

    return "[" + ", ".join(f"{float(v): .7g}" for v in np.ravel(a)) + "]"


def rows_block(header: list[str], rows) -> str:
    """A fenced code block: ``header`` lines, a blank line, then each ``(label, vector)``
    row with labels aligned (a ``None`` vector is a blank line)."""
    width = max(len(k) for k, _ in rows)
    lines = header + [""] + [f"{k:<{width}}  {vector(v)}" if v is not None else ""
                             for k, v in rows]
    return "```\n" + "\n".join(lines) + "\n```"
