"""The cases of the graders' mode (spec section 11): derived at check time from a secret
seed, with NumPy only.

A committed or generated golden file holds its answers (the oracle output, the running
statistics, the gradients); an implementation that can read files can return them. In
the graders' mode no answer exists while the implementation runs: the checker draws each
case's inputs from a secret seed and computes the oracle, the budgets and the spreads only
after the implementation has returned (``resblock.conformance.judging.secret``).

The draws follow the committed derivation (spec 5.2) with one change: each array comes
from NumPy's PCG64 seeded by SHA-256 of the secret seed and the array's derivation string,
so a case's data depends on the seed and its own fields, and no JAX is needed. Parameters
are always explicit (the ``init`` source of the seeded family is Flax's initialiser,
which needs JAX): a seeded row of the mirrored grid becomes a functional row of the same
shape.

Pure NumPy: importing this never imports JAX.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace

import numpy as np

from resblock.errors import GridError
from resblock.spec import derivation
from resblock.spec.cases import Case, unique

SEED_BYTES = 16
_SEED_RE = re.compile(r"^[0-9a-f]{2,128}$")


def new_seed() -> str:
    """A fresh secret seed: 16 bytes from ``os.urandom``, as 32 lowercase hex digits."""
    return os.urandom(SEED_BYTES).hex()


def check_seed(seed: str) -> str:
    """``seed`` if it is a valid secret seed (hex, 2 to 128 digits, even count)."""
    if not isinstance(seed, str) or not _SEED_RE.match(seed) or len(seed) % 2:
        raise GridError(f"secret seed {seed!r}: expected an even number (2 to 128) of "
                        "lowercase hexadecimal digits, e.g. the 32 that `python -c \"import "
                        "os; print(os.urandom(16).hex())\"` prints")
    return seed


class SecretDraws:
    """Draws of :mod:`resblock.spec.derivation` from NumPy's PCG64, one generator per
    array, seeded by SHA-256 of ``seed`` and the array's derivation string."""

    def __init__(self, seed: str):
        self._seed = bytes.fromhex(check_seed(seed))

    def _rng(self, case: Case, role: str) -> np.random.Generator:
        h = hashlib.sha256(b"resblock-secret/1|" + self._seed + b"|"
                           + case.derivation_string(role).encode("utf-8")).digest()
        return np.random.Generator(np.random.PCG64(int.from_bytes(h, "little")))

    def normal(self, case, role, shape):
        return self._rng(case, role).standard_normal(shape, dtype=np.float32)

    def uniform(self, case, role, shape, lo, hi):
        u = self._rng(case, role).random(shape, dtype=np.float32)
        return (np.float32(lo) + np.float32(hi - lo) * u).astype(np.float32)


def secret_case(case: Case) -> Case:
    """The case as the graders' mode runs it: explicit parameters (a seeded case becomes
    a functional one of the same shape, inputs and seed)."""
    return replace(case, family="functional") if case.params_source == "init" else case


def secret_cases(cases) -> list[Case]:
    """The graders' grid mirroring ``cases`` (a preset's): seeded rows become functional,
    duplicates are dropped, the order is kept."""
    seen, out = set(), []
    for c in map(secret_case, cases):
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return unique(out)


def derive_inputs(case: Case, seed: str) -> tuple[np.ndarray, dict, dict]:
    """``(x, params, batch_stats)`` of a case of the graders' mode, float32."""
    if case.params_source == "init":
        raise GridError(f"{case.id}: the graders' mode draws every parameter; a seeded "
                        "case (Flax init, which needs JAX) has no secret derivation")
    draws = SecretDraws(seed)
    x = derivation.derive_x(case, draws)
    params, stats = derivation.derive_random_variables(case, draws)
    return x, derivation.zero_batch_norms(case, params), stats


def derive_y_bar(case: Case, seed: str) -> np.ndarray:
    """The output cotangent of a case of the graders' mode (spec 10.1's role "y_bar")."""
    return derivation.derive_y_bar(case, SecretDraws(seed))
