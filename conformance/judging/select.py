"""Case selection: ``-k`` expressions and ``--xfail`` files.

``-k`` follows pytest: words joined by ``and``, ``or``, ``not`` and parentheses; a word
matches a case id as a substring, or as a glob when it contains ``*``, ``?`` or ``[``.
An xfail file has one entry per line, ``PATTERN  # reason`` (a case id or a glob);
blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from resblock.errors import HarnessError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def _word_matches(word: str, case_id: str) -> bool:
    if any(ch in word for ch in "*?["):
        return fnmatch.fnmatchcase(case_id, word)
    return word in case_id


MAX_KEYWORD_TOKENS = 200  # evaluation nests one closure per operator


def compile_keyword(expr: str):
    """A predicate ``case_id -> bool`` for a -k expression; HarnessError if malformed."""
    tokens = _TOKEN.findall(expr)
    if not tokens:
        raise HarnessError(f"-k {expr!r}: empty expression")
    if len(tokens) > MAX_KEYWORD_TOKENS:
        raise HarnessError(f"-k: {len(tokens)} words and operators, more than "
                           f"{MAX_KEYWORD_TOKENS}; use an --xfail file or a shorter expression")
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_or():
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda s: a(s) or b(s))(left, right)
        return left

    def parse_and():
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda s: a(s) and b(s))(left, right)
        return left

    def parse_not():
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda s: not inner(s)
        return parse_atom()

    def parse_atom():
        tok = peek()
        if tok is None or tok in (")", "and", "or"):
            raise HarnessError(f"-k {expr!r}: expected a word or '(' at token {pos + 1}")
        take()
        if tok == "(":
            inner = parse_or()
            if peek() != ")":
                raise HarnessError(f"-k {expr!r}: missing ')'")
            take()
            return inner
        return lambda s, w=tok: _word_matches(w, s)

    try:
        pred = parse_or()
    except RecursionError:
        raise HarnessError("-k: the expression is nested too deeply") from None
    if pos != len(tokens):
        raise HarnessError(f"-k {expr!r}: unexpected {tokens[pos]!r} at token {pos + 1}")
    return pred


@dataclass(frozen=True)
class XfailEntry:
    pattern: str
    reason: str
    line: int

    def matches(self, case_id: str) -> bool:
        if any(ch in self.pattern for ch in "*?["):
            return fnmatch.fnmatchcase(case_id, self.pattern)
        return case_id == self.pattern


def read_xfail(path) -> list[XfailEntry]:
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"--xfail {path}: no such file")
    entries = []
    try:
        text = p.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(f"--xfail {path}: not UTF-8 text (byte {e.start}: "
                           f"{e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    except OSError as e:
        raise HarnessError(f"--xfail {path}: cannot read it: {e.strerror or e}") from None
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        pattern = pattern.strip()
        if " " in pattern:
            raise HarnessError(f"{path}:{i}: one case id or glob per line, got {pattern!r}")
        entries.append(XfailEntry(pattern, reason.strip() or "(no reason given)", i))
    return entries


def xfail_for(case_id: str, entries) -> XfailEntry | None:
    for e in entries:
        if e.matches(case_id):
            return e
    return None
