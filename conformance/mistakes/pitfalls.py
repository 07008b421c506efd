"""Finding the known pitfalls: :func:`lookup` by name (forward rows, then the backward
ones of :mod:`resblock.conformance.mistakes.variants_backward`), :func:`names` in table order and
:func:`applies` to a case; building the index refuses duplicate names. This is the public
home of the pitfalls: it also re-exports the row type (``Pitfall``, ``STAGES``,
``RESULTS``, from :mod:`resblock.conformance.mistakes.pitfall_record`) and the table
(``PITFALLS``, from :mod:`resblock.conformance.mistakes.pitfall_table`).
"""

from __future__ import annotations

import difflib

from resblock.conformance.mistakes.pitfall_record import RESULTS, STAGES, Pitfall
from resblock.conformance.mistakes.pitfall_table import PITFALLS

__all__ = ["PITFALLS", "RESULTS", "STAGES", "Pitfall", "applies", "lookup", "names"]

_BY_NAME: dict[str, Pitfall] = {}
for _p in PITFALLS:
    if _p.name in _BY_NAME:
        raise ValueError(f"duplicate pitfall name {_p.name!r}")
    _BY_NAME[_p.name] = _p
del _p


def lookup(name: str) -> Pitfall:
    """The pitfall called ``name``; KeyError listing close matches and all names if unknown."""
    try:
        return _BY_NAME[name]
    except KeyError:
        from resblock.conformance.mistakes.variants_backward import (
            BACKWARD_BY_NAME as backward_rows,
        )

        if name in backward_rows:  # a backward pitfall (--api backward): same fields
            return backward_rows[name]
        close = difflib.get_close_matches(name, _BY_NAME, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown pitfall {name!r}.{hint} Known pitfalls: {', '.join(sorted(_BY_NAME))}"
        ) from None


def applies(p: Pitfall, case) -> bool:
    """Whether mistake ``p`` can show on ``case`` (its family, its values per channel)."""
    return case.family in p.families and case.n * case.h * case.w >= p.min_values


def names() -> tuple[str, ...]:
    """Pitfall names in table order."""
    return tuple(p.name for p in PITFALLS)
