"""The graders' mode (``resblock check --secret``, spec section 11): no answer exists
where the implementation could read it.

The cases are drawn at check time from a secret seed (:mod:`resblock.spec.secret`); each
case's oracle, per-element budgets and aggregate spreads are computed by the checker, with
NumPy only, when the judge first asks for them, which is after the implementation has
returned the whole shape group (:class:`SecretArrays`). The seed comes from
``os.urandom`` unless the grader gives one, and is shown only in the run's record
(:attr:`RunResult.secret`), printed after the run. The worker runs confined
(:mod:`resblock.conformance.running.confine`) where the platform offers it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from resblock.conformance.judging.runner import CheckConfig, RunResult, check_groups
from resblock.conformance.judging.select import compile_keyword
from resblock.errors import HarnessError
from resblock.golden.store import (
    CASE_ARRAYS,
    GRAD_ARRAYS,
    REFERENCE_ARRAYS,
    GoldenCase,
    flat_tree,
)
from resblock.spec import secret
from resblock.spec.cases import Case
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES

DEFAULT_PRESET = "default"

# What a secret case holds: its inputs at once, the oracle and its budgets on demand. The
# float32 reference of the golden files (``y``, ``grad/x``, ...) does not exist here.
_REFERENCE_GRAD = tuple(f"grad/{t}" for t in ("x",) + tuple(f"params/{p}" for p in PARAM_NAMES))
FORWARD_NAMES = tuple(n for n in CASE_ARRAYS if n not in REFERENCE_ARRAYS)
GRAD_NAMES = tuple(n for n in GRAD_ARRAYS if n not in _REFERENCE_GRAD)


class SecretArrays(Mapping):
    """The arrays of one secret case: the inputs (and, for the backward, the cotangent)
    drawn when the case is built; the oracle, budgets and spreads computed the first time
    any of them is read, never before (:attr:`computed` says whether they have been)."""

    def __init__(self, case: Case, seed: str, grad: bool):
        x, params, stats = secret.derive_inputs(case, seed)
        self._x, self._params, self._stats = x, params, stats
        self._grad = grad
        self._arrays = {"x": x}
        self._arrays.update(flat_tree("params", params, PARAM_NAMES))
        self._arrays.update(flat_tree("batch_stats_in", stats, STAT_NAMES))
        if grad:
            self._arrays["grad/y_bar"] = secret.derive_y_bar(case, seed)
        self._names = FORWARD_NAMES + (GRAD_NAMES if grad else ())
        self.computed = False

    def _compute(self) -> None:
        from resblock.generator.engine import budget_arrays, grad_arrays
        from resblock.spec import backward, oracle

        x, params, stats = self._x, self._params, self._stats
        if self._grad:
            y_bar = self._arrays["grad/y_bar"]
            bw = backward.backward(x, params, stats, y_bar)
            ref = bw.forward
        else:
            ref = oracle.forward(x, params, stats)
        a = {"oracle/y": ref.y}
        a.update(flat_tree("oracle/batch_stats_out", ref.batch_stats, STAT_NAMES))
        for stage, v in ref.stages.items():
            a[f"oracle/stages/{stage}"] = v
        a.update(budget_arrays(x, params, stats, ref.stages))
        if self._grad:
            a.update(grad_arrays(x, params, stats, y_bar, None, None, bw, reference=False))
        self._arrays.update(a)
        self.kappa = float(ref.kappa)
        self.computed = True

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._arrays and not self.computed:
            self._compute()
        return self._arrays[name]

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def secret_case(case: Case, seed: str, grad: bool) -> GoldenCase:
    """A case of the graders' mode with the interface of a golden case."""
    return GoldenCase(case=case, entry={"id": case.id, "group": case.group},
                      arrays=SecretArrays(case, seed, grad))


def grid(preset: str = DEFAULT_PRESET) -> list[Case]:
    """The graders' grid: the cases of a generator preset, its seeded rows made
    functional (:func:`resblock.spec.secret.secret_cases`)."""
    from resblock.generator.grid import preset_cases

    return secret.secret_cases(preset_cases(preset))


def check_config(config: CheckConfig) -> None:
    """Refuse what the graders' mode cannot check."""
    if config.api == "seeded":
        raise HarnessError(
            "--secret does not take --api seeded: the seeded API's parameters come from "
            "Flax's initialiser (JAX's PRNG), so a secret case would have to run JAX in the "
            "checker and its answer would be the public initialiser's; check the block's "
            "arithmetic with the functional API (forward(x, params, batch_stats)) or "
            "--api backward")
    if config.api == "inference":
        raise HarnessError(
            "--secret does not take --api inference yet: the graders' mode draws training "
            "cases (spec section 11); check an inference port against the committed set "
            "(resblock check --api inference)")
    if config.program:
        raise HarnessError("--secret checks an --impl in a confined worker; --exec programs "
                           "are not confined and are not supported in this mode")


def run_secret_check(config: CheckConfig, invoker, *, seed: str | None = None,
                     preset: str = DEFAULT_PRESET, progress=None) -> RunResult:
    """Check the cases of ``preset`` drawn from ``seed`` (a fresh ``os.urandom`` seed
    when None) with ``invoker``; the seed is in ``run.secret`` once the run is over."""
    check_config(config)
    t0 = time.perf_counter()
    seed = secret.new_seed() if seed is None else secret.check_seed(seed)
    keyword = compile_keyword(config.keyword) if config.keyword else None
    cases = [c for c in grid(preset) if keyword is None or keyword(c.id)]
    if not cases:
        raise HarnessError("no case selected: nothing to check (the -k expression filtered "
                           f"out every case of the secret grid {preset!r})")
    groups: dict = {}
    for c in sorted(cases, key=lambda c: (c.group, c.id)):
        groups.setdefault(c.group, []).append(c)
    run = RunResult(config=config, goldens=[])
    grad = config.api == "backward"
    try:
        check_groups(config, invoker,
                     ([secret_case(c, seed, grad) for c in members]
                      for members in groups.values()),
                     len(cases), run, progress)
    finally:
        invoker.close()
    run.secret = {"seed": seed, "preset": preset, "cases": len(cases),
                  "isolation": getattr(invoker, "isolation", "none")}
    run.seconds = time.perf_counter() - t0
    return run
