"""``resblock verify``: a golden file is intact and its reference passes its own gate."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from resblock.errors import GoldenFormatError
from resblock.golden.store import BOUND_STEP

# A budget or spread recomputed from a case's inputs matches the stored one to one step
# of the stored grid (spec 5.4: a last-bit difference may round to the next point) plus
# 1e-5 relative (float32 BLAS differs between machines in the last bits).
BOUND_MATCH = BOUND_STEP + 1e-5


@dataclass
class CaseVerdict:
    id: str
    kappa: float
    max_abs_dev: float
    score: float
    ok: bool


@dataclass
class FileVerdict:
    path: str
    problems: list[str] = field(default_factory=list)
    cases: list[CaseVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.cases)


def verify_file(path, profile: str = "fp32", derive: bool = True) -> FileVerdict:
    """Schema, structure, hashes, the inputs re-derived from the case ids (``derive``,
    when JAX is installed), then the float32 reference against the float64 oracle.

    A golden whose float32 outputs deviate from its own oracle by more than the profile
    allows (e.g. regenerated with TF32 convolutions) fails, with a message saying so.
    """
    from resblock.generator.engine import reference_score
    from resblock.golden.reader import GoldenFile
    from resblock.spec import tolerance

    prof = tolerance.profile(profile)
    verdict = FileVerdict(str(path))
    try:
        gf = GoldenFile(path)
    except GoldenFormatError as e:
        verdict.problems.append(str(e))
        return verdict
    with gf:
        verdict.problems.extend(f"{path}: {p}" for p in gf.hash_problems())
        if verdict.problems:  # nothing computed from data that fails its seal means much
            return verdict
        if not gf.entries:
            verdict.problems.append(f"{path}: the file holds no case: there is nothing to "
                                    "check against; regenerate it")
        if derive:
            problems, notes = input_problems(gf)
            verdict.problems.extend(f"{path}: {p}" for p in problems)
            verdict.notes.extend(f"{path}: {n}" for n in notes)
        for gc in gf.iter_cases():
            problem = oracle_problem(gc)
            if problem:
                verdict.problems.append(f"{path}: case {gc.id}: {problem}")
            # The backward has no storage budgets (fp16, bf16): its stored float32
            # gradients are held to the strictest bound, which implies the looser ones.
            gprof = tolerance.profile("fp32") if prof.stores_low else prof
            problem = gradient_problem(gc, gprof) if gc.has_grad else None
            if problem:
                verdict.problems.append(f"{path}: case {gc.id}: {problem}")
            problem = inference_problem(gc, prof) if gc.has_inference else None
            if problem:
                verdict.problems.append(f"{path}: case {gc.id}: {problem}")
            score = reference_score(gc.case, gc.arrays, prof)
            dev = float(np.max(np.abs(gc.arrays["y"] - gc.arrays["oracle/y"])))
            ok = score <= 1.0
            verdict.cases.append(CaseVerdict(gc.id, gc.kappa, dev, score, ok))
            if not ok:
                verdict.problems.append(
                    f"{path}: case {gc.id}: stored float32 reference deviates from the float64 "
                    f"oracle by {dev:.3g} (score {score:.3g} > 1 under profile {profile}); "
                    "was it computed with reduced-precision (TF32/bf16) convolutions? "
                    "Regenerate with full float32 precision."
                )
            else:
                # ref_score is recorded under fp32 whatever profile verifies the file
                fp32 = score if prof.name == "fp32" else reference_score(
                    gc.case, gc.arrays, tolerance.profile("fp32"))
                if abs(fp32 - gc.entry["ref_score"]) > 1e-6 * max(1.0, fp32):
                    verdict.problems.append(
                        f"{path}: case {gc.id}: recorded ref_score "
                        f"{gc.entry['ref_score']:.6g} differs from the recomputed {fp32:.6g}")
    return verdict


DERIVE_CHUNK = 64  # cases derived per call: bounds the memory of a large file


def input_problems(gf) -> tuple[list[str], list[str]]:
    """Re-derive every case's inputs from its id and compare them bit for bit.

    Catches a file whose inputs were replaced and whose oracle, outputs, kappa and
    hashes were recomputed to match. Returns ``(problems, notes)``: a note says why the
    inputs could not be checked (JAX absent; the file was derived by another JAX version
    or PRNG configuration, whose bits may legitimately differ).
    """
    try:
        import jax

        from resblock.generator.batched import derive_cases, derive_cases_and_y_bars
        from resblock.spec.derivation import prng_config
    except ImportError as e:
        return [], [f"inputs not re-derived from the case ids: JAX is not installed ({e}); "
                    "pip install \".[jax]\" in a resblock checkout (the kit is not on PyPI) "
                    "to check them"]
    from resblock.golden.store import INPUT_ARRAYS
    from resblock.spec.cases import Case

    env, prng = gf.metadata["environment"], gf.metadata["computation"].get("prng")
    same = env.get("jax") == jax.__version__ and prng == prng_config()
    entries = sorted(gf.entries, key=lambda e: (e["group"], e["row"]))
    differing = []
    for i in range(0, len(entries), DERIVE_CHUNK):
        chunk = entries[i:i + DERIVE_CHUNK]
        cases = [Case.from_id(e["id"]) for e in chunk]
        if any(gf.group_has_grad(e["group"]) for e in chunk):
            derived, y_bars = derive_cases_and_y_bars(cases)
        else:
            derived, y_bars = derive_cases(cases), None
        running = None
        if any(gf.group_has_inference(e["group"]) for e in chunk):
            from resblock.generator.batched import derive_running_stats_all

            running = derive_running_stats_all(cases)
        for j, (e, (x, params, stats)) in enumerate(zip(chunk, derived, strict=True)):
            fresh = {"x": x}
            fresh.update({f"params/{k}/{kk}": v for k, d in params.items() for kk, v in d.items()})
            fresh.update({f"batch_stats_in/{k}/{kk}": v for k, d in stats.items()
                          for kk, v in d.items()})
            stored = gf.case(e["id"]).arrays
            names = INPUT_ARRAYS
            if "grad/y_bar" in stored:
                fresh["grad/y_bar"], names = y_bars[j], INPUT_ARRAYS + ("grad/y_bar",)
            if "inference/y" in stored:
                from resblock.golden.store import INFERENCE_STATS, flat_tree
                from resblock.spec.constants import STAT_NAMES

                fresh.update(flat_tree("inference/batch_stats", running[j], STAT_NAMES))
                names = names + INFERENCE_STATS
            first = next((n for n in names
                          if not np.array_equal(np.asarray(fresh[n]), stored[n])), None)
            if first is not None:
                differing.append((e["id"], first))
    if not differing:
        return [], []
    if not same:
        return [], [f"the inputs of {len(differing)} cases differ from those this JAX "
                    f"({jax.__version__}, {prng_config()}) derives from their ids, but the "
                    f"file was made with JAX {env.get('jax')} ({prng}): inputs not verified"]
    return [f"case {cid}: stored {name} differs from the input derived from the case id: "
            "the file's inputs were replaced" for cid, name in differing], []


def oracle_problem(gc) -> str | None:
    """Recompute the float64 oracle from the stored inputs; it must match what is stored.

    Catches a file whose outputs and oracle were edited together and re-hashed. The
    oracle is float64 NumPy, so another BLAS may change the last bits: the comparison
    allows 1e-9 of each tensor's scale, far below any tolerance the gate uses.
    """
    from resblock.spec import oracle
    from resblock.spec.constants import STAT_NAMES

    ref = oracle.forward(gc.x, gc.params, gc.batch_stats_in)
    pairs = [("oracle/y", ref.y)] + [
        (f"oracle/batch_stats_out/{n}", ref.batch_stats[n.split("/")[0]][n.split("/")[1]])
        for n in STAT_NAMES] + [(f"oracle/stages/{k}", v) for k, v in ref.stages.items()]
    for name, fresh in pairs:
        if name not in gc.arrays:  # format 5 without stage data: nothing stored to check
            continue
        stored = gc.arrays[name]
        scale = max(float(np.max(np.abs(fresh))), 1.0) if fresh.size else 1.0
        dev = float(np.max(np.abs(stored - fresh))) if fresh.size else 0.0
        if not dev <= 1e-9 * scale:
            return (f"stored {name} differs from the float64 oracle recomputed from the "
                    f"stored inputs by {dev:.3g}: the file's data is inconsistent")
    if not np.isclose(ref.kappa, gc.kappa, rtol=1e-9):
        return f"recorded kappa {gc.kappa:.6g} differs from the recomputed {ref.kappa:.6g}"
    return budget_problem(gc, ref.stages)


def gradient_problem(gc, prof) -> str | None:
    """The gradient datasets (format 2.1): the float64 oracle backward recomputed from the
    stored inputs and ``y_bar`` (to 1e-9 of each tensor's scale), its budgets (BOUND_MATCH
    relative), and the stored ``jax.vjp`` gradients within those budgets under ``prof``."""
    from resblock.conformance.mistakes.variants_backward import backward_score
    from resblock.generator.engine import grad_arrays
    from resblock.golden.store import grad_path
    from resblock.spec import backward
    from resblock.spec.error_model_backward import GRAD_TENSORS

    bw = backward.backward(gc.x, gc.params, gc.batch_stats_in, gc.y_bar)
    ref = {n: gc.arrays[grad_path(n)] for n in GRAD_TENSORS}
    fresh = grad_arrays(gc.x, gc.params, gc.batch_stats_in, gc.y_bar, ref["x"],
                        {}, bw, reference=False)
    for name, a in fresh.items():
        if name.startswith("sigma") and not gc.has_spreads:
            continue  # format 3: no spreads
        stored = np.asarray(gc.arrays[name], np.float64)
        a = np.asarray(a, np.float64)
        if name.startswith("oracle/"):
            scale = max(float(np.max(np.abs(a))), 1.0)
            if not float(np.max(np.abs(stored - a))) <= 1e-9 * scale:
                return (f"stored {name} differs from the oracle backward recomputed from the "
                        "stored inputs: the file's data is inconsistent")
        elif not np.all(np.abs(stored - a) <= BOUND_MATCH * np.abs(a) + 1e-38):
            return (f"stored {name} differs from the backward error model's budget "
                    "recomputed from the stored inputs: the file's bounds are inconsistent")
    score = backward_score(gc, ref, prof, aggregate=True)
    if not score <= 1.0:
        return (f"stored reference gradients deviate from the float64 oracle backward (score "
                f"{score:.3g} > 1 under profile {prof.name}); was the VJP computed with "
                "reduced-precision convolutions? Regenerate with full float32 precision.")
    return None


def inference_problem(gc, prof) -> str | None:
    """The inference datasets (format 6): the float64 inference oracle recomputed from
    the stored inputs and running statistics (to 1e-9 of its scale), its budgets and
    spreads (BOUND_MATCH relative), and the stored Flax ``inference/y`` within them under
    ``prof`` (both tests)."""
    from resblock.conformance.mistakes.variants_inference import inference_score
    from resblock.generator.engine import inference_arrays

    fresh = inference_arrays(gc.x, gc.params, gc.running_stats)
    for name, a in fresh.items():
        if name.startswith("inference/batch_stats/"):
            continue  # the inputs themselves (re-derived by input_problems)
        if name not in gc.arrays:  # a 6.0.0 file without the storage term: recomputed
            continue
        stored = np.asarray(gc.arrays[name], np.float64)
        a = np.asarray(a, np.float64)
        if name.startswith("oracle/"):
            scale = max(float(np.max(np.abs(a))), 1.0) if a.size else 1.0
            if not float(np.max(np.abs(stored - a), initial=0.0)) <= 1e-9 * scale:
                return (f"stored {name} differs from the inference oracle recomputed from "
                        "the stored inputs: the file's data is inconsistent")
        elif not np.all(np.abs(stored - a) <= BOUND_MATCH * np.abs(a) + 1e-38):
            return (f"stored {name} differs from the inference error model's value "
                    "recomputed from the stored inputs: the file's bounds are inconsistent")
    score = inference_score(gc, gc.arrays["inference/y"], prof, aggregate=True)
    if not score <= 1.0:
        return (f"stored inference/y deviates from the float64 inference oracle (score "
                f"{score:.3g} > 1 under profile {prof.name}); was it computed with "
                "reduced-precision convolutions? Regenerate with full float32 precision.")
    return None


def budget_problem(gc, stages: dict) -> str | None:
    """Recompute the error model's budgets; the stored ones must match.

    The budgets are evaluated with float32 BLAS (a bound needs no more), so another
    machine may differ in the last bits, and a value that differs in them may round to
    the next point of the stored grid (spec 5.4): BOUND_MATCH relative is allowed, far
    inside the model's safety factor. Catches a file whose budgets were inflated and
    re-hashed.
    """
    from resblock.generator.engine import budget_arrays
    from resblock.golden.store import has_stages

    # Without stored stage data only the output's and statistics' budgets are compared:
    # the stages' are not computed past their use (a real-size case: 0.5 GB less).
    fresh = budget_arrays(gc.x, gc.params, gc.batch_stats_in, stages,
                          with_stages=has_stages(gc.arrays))
    for name, a in fresh.items():
        if name.startswith("sigma") and not gc.has_spreads:
            continue  # format 3: no spreads
        if name not in gc.arrays:  # format 5 without stage data
            continue
        stored = np.asarray(gc.arrays[name], np.float64)
        a = np.asarray(a, np.float64)
        if not np.all(np.abs(stored - a) <= BOUND_MATCH * np.abs(a) + 1e-38):
            return (f"stored {name} differs from the error model's budget recomputed from "
                    f"the stored inputs: the file's bounds are inconsistent")
    return None
