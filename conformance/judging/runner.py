"""The conformance run: select cases, call the implementation, judge, diagnose.

Library entry point behind ``resblock check`` and the pytest plugin. Returns a
:class:`RunResult`; reporting and exit codes are the callers' business.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from resblock.conformance.judging.compare import CaseResult, compare_case, first_diverging_stage
from resblock.conformance.judging.select import compile_keyword, read_xfail, xfail_for
from resblock.conformance.running import adapters
from resblock.conformance.running.adapters import ContractError
from resblock.errors import GoldenFormatError, HarnessError
from resblock.spec import tolerance

APIS = ("functional", "seeded", "backward", "inference")
MAX_TIMEOUT_S = 7 * 86400.0


@dataclass(frozen=True)
class CheckConfig:
    target: str
    api: str = "functional"
    layout: str = "nhwc"
    profile: str = "fp32"
    keyword: str | None = None
    xfail: str | None = None
    timeout: float | None = None
    diagnose: bool = True
    max_diagnosed: int = 24
    details: int = 0  # worst failing cases that get error maps (conformance/judging/details.py)
    program: bool = False  # target is an --exec template, not an --impl
    onnx: bool = False  # target is an ONNX model file (--onnx)

    def __post_init__(self):
        if self.api not in APIS:
            raise HarnessError(f"--api {self.api!r}: expected one of {', '.join(APIS)}")
        if self.layout not in adapters.LAYOUTS:
            raise HarnessError(f"--layout {self.layout!r}: expected nhwc or nchw")
        if self.api == "seeded" and self.layout != "nhwc":
            raise HarnessError("--api seeded takes x as (H, W, C): --layout nchw does not apply")
        tolerance.check_name(self.profile)  # ProfileError: what to use instead
        if self.api == "backward":
            from resblock.golden.store import no_store_backward

            no_store_backward(tolerance.profile(self.profile))
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT_S:
            raise HarnessError(f"--timeout must be positive and at most {MAX_TIMEOUT_S:g} s "
                               f"(one week), got {self.timeout}")


@dataclass
class RunResult:
    config: CheckConfig
    goldens: list[dict]
    results: list[CaseResult] = field(default_factory=list)
    stale_xfail: list[str] = field(default_factory=list)
    pitfalls: Counter = field(default_factory=Counter)
    details: dict = field(default_factory=dict)  # case id -> details.case_detail(...)
    seconds: float = 0.0
    # The graders' mode (judging/secret.py): seed, preset, case count and the isolation in
    # force, set once the run is over; None for a check against golden files.
    secret: dict | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def conforms(self) -> bool:
        """No case failed and at least one passed: a run in which every case was an
        expected failure or outside the profile checked nothing, so it does not
        conform."""
        return (any(r.status in ("pass", "xpass") for r in self.results)
                and not any(r.status in ("fail", "error") for r in self.results))


def open_goldens(paths):
    from resblock.golden.reader import GoldenFile

    files = []
    for p in paths:
        try:
            gf = GoldenFile(p)
        except GoldenFormatError:
            for f in files:
                f.close()
            raise
        problems = gf.index_problems()  # the parts are verified as each group is read
        if problems:
            gf.close()
            raise GoldenFormatError(f"{p}: " + "; ".join(problems[:3]))
        files.append(gf)
    return files


def judge(gc, outcome, config: CheckConfig, prof) -> CaseResult:
    """Turn one Outcome into a CaseResult (pass / fail / error).

    Whatever the implementation returned, a malformed result is that case's error, never
    the run's (a dict of intermediates holding non-arrays, objects that refuse conversion).
    """
    try:
        return _judge(gc, outcome, config, prof)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        from resblock.conformance.running.invoke import clean_text

        return CaseResult(id=gc.id, family=gc.case.family, status="error",
                          seconds=outcome.seconds,
                          message=clean_text(f"the result breaks the contract "
                                             f"({type(e).__name__}: {e})"))


def _layout_hint(error: str, config: CheckConfig) -> str:
    """A shape error raised inside an NHWC-called implementation is most often a PyTorch
    port run without --layout nchw: say so next to the framework's own message."""
    text = error.lower()
    shape_error = ("channels" in text or ("shape" in text and "expected" in text)
                   or "size of tensor" in text or "must match the size" in text
                   or "shapes cannot be multiplied" in text)
    if config.api in ("functional", "backward", "inference") and config.layout == "nhwc" and \
            not config.program and not config.onnx and shape_error:
        return ("\n    (the kit called it with NHWC x and HWIO kernels; if it takes NCHW and "
                "OIHW, as PyTorch does, pass --layout nchw)")
    return ""


def _judge(gc, outcome, config: CheckConfig, prof) -> CaseResult:
    res = CaseResult(id=gc.id, family=gc.case.family, status="error", seconds=outcome.seconds)
    if outcome.error is not None:
        from resblock.conformance.running.invoke import clean_text

        res.message = clean_text(outcome.error) + _layout_hint(outcome.error, config)
        return res
    if config.api == "backward":
        return _judge_backward(gc, outcome, config, prof, res)
    if config.api == "inference":
        return _judge_inference(gc, outcome, config, prof, res)
    c = gc.case
    try:
        y, stats, inter = adapters.split_result(outcome.result, config.api)
        if config.api == "seeded":
            y = adapters.check_array(y, "output", (c.h * c.w * c.features,))
            y = y.reshape(1, c.h, c.w, c.features)
        else:
            want = (c.n, c.h, c.w, c.features) if config.layout == "nhwc" else \
                (c.n, c.features, c.h, c.w)
            other = "nchw" if config.layout == "nhwc" else "nhwc"
            y = adapters.check_array(y, "output y", want,
                                     f"is the implementation {other.upper()}? "
                                     f"try --layout {other}")
            y = adapters.output_from_user_layout(y, config.layout)
        if stats is None and config.api != "seeded":
            raise ContractError("forward returned no new batch_stats (None); the functional "
                                "contract is (y, new_batch_stats): the running statistics "
                                "are checked too")
        stats_flat = None if stats is None else adapters.check_stats(stats, c.features)
    except ContractError as e:
        from resblock.conformance.running.invoke import clean_text

        res.message = clean_text(str(e))
        return res
    res.tensors = compare_case(gc, y, stats_flat, prof, config.layout)
    if inter:
        if config.layout == "nchw":
            inter = {k: adapters.output_from_user_layout(np.asarray(v), "nchw")
                     for k, v in inter.items()}
        res.stage = first_diverging_stage(gc, inter, prof)
    nonfinite = int(np.count_nonzero(~np.isfinite(y)))
    if stats_flat is None and config.api == "seeded":
        res.message = "batch_stats not returned: only the output was checked"
    return _conclude(res, outcome,
                     f"{nonfinite} of {y.size} output values are NaN or Inf" if nonfinite else "")


def _conclude(res: CaseResult, outcome, nonfinite: str) -> CaseResult:
    """pass, or fail with every problem said: inputs modified in place, tensors out of
    tolerance, non-finite values (``nonfinite``: its sentence, or "")."""
    problems = []
    if outcome.mutated:
        problems.append("modified its inputs in place: " + ", ".join(outcome.mutated))
    bad = res.failing_tensors
    if bad:
        problems.append("out of tolerance: " + ", ".join(t.name for t in bad))
    if nonfinite:
        problems.append(nonfinite)
    if problems:
        res.status = "fail"
        res.message = "; ".join(problems)
    else:
        res.status = "pass"
    return res


def _judge_backward(gc, outcome, config: CheckConfig, prof, res: CaseResult) -> CaseResult:
    """Judge ``(x_bar, params_bar)`` against the oracle backward (spec section 10)."""
    from resblock.conformance.judging.compare import compare_backward

    try:
        grads = adapters.split_backward(outcome.result, gc.case, config.layout)
    except ContractError as e:
        from resblock.conformance.running.invoke import clean_text

        res.message = clean_text(str(e))
        return res
    res.tensors = compare_backward(gc, grads, prof, config.layout)
    note = ""
    if not res.failing_tensors:  # within the stored budgets: resolve the ReLU masks
        from resblock.conformance.judging.masks import resolve_masks

        resolved = resolve_masks(gc, grads, prof, config.layout)
        if resolved is not None:
            res.tensors, note = resolved
    nonfinite = sum(int(np.count_nonzero(~np.isfinite(a))) for a in grads.values())
    res = _conclude(res, outcome,
                    f"{nonfinite} gradient values are NaN or Inf" if nonfinite else "")
    if note:
        res.message = f"{res.message}; {note}" if res.message else note
    return res


def _judge_inference(gc, outcome, config: CheckConfig, prof, res: CaseResult) -> CaseResult:
    """Judge ``y`` against the inference oracle (spec section 12)."""
    from resblock.conformance.judging.compare import compare_inference

    try:
        y = adapters.split_inference(outcome.result, gc.case, config.layout)
    except ContractError as e:
        from resblock.conformance.running.invoke import clean_text

        res.message = clean_text(str(e))
        return res
    res.tensors = compare_inference(gc, y, prof, config.layout)
    nonfinite = int(np.count_nonzero(~np.isfinite(y)))
    return _conclude(res, outcome,
                     f"{nonfinite} of {y.size} output values are NaN or Inf" if nonfinite else "")


def check_inference_data(files) -> None:
    """Refuse, in one line, golden files whose groups lack the inference datasets."""
    for f in files:
        if not all(f.group_has_inference(g["name"]) for g in f.metadata["groups"]):
            v = f.metadata["format_version"]
            why = f"format {v} predates them" if tuple(int(p) for p in v.split(".")[:2]) < \
                (5, 1) else "generated without --inference"
            raise GoldenFormatError(
                f"{f.path}: no inference datasets ({why}), so --api inference has nothing "
                "to compare with; regenerate it with `resblock generate --inference` and the "
                "same grid (`resblock list` shows it), or check against the committed set")


def check_gradients(files) -> None:
    """Refuse, in one line, golden files whose groups lack the gradient datasets."""
    for f in files:
        if not all(f.group_has_grad(g["name"]) for g in f.metadata["groups"]):
            v = f.metadata["format_version"]
            why = f"format {v} predates them" if v.startswith("2.0.") else \
                "generated without --grad"
            raise GoldenFormatError(
                f"{f.path}: no gradient datasets ({why}), so --api backward has nothing to "
                "compare with; "
                "regenerate it with `resblock generate --grad` and the same grid (`resblock "
                "list` shows it), or check against the committed set")


def run_check(config: CheckConfig, invoker, golden_paths, progress=None) -> RunResult:
    """Check every selected case of ``golden_paths`` with ``invoker``."""
    t0 = time.perf_counter()
    keyword = compile_keyword(config.keyword) if config.keyword else None
    if config.xfail:
        read_xfail(config.xfail)  # a bad file is refused before the goldens are opened
    files = open_goldens(golden_paths)
    if config.api in ("backward", "inference"):
        try:
            (check_gradients if config.api == "backward" else check_inference_data)(files)
        except GoldenFormatError:
            for f in files:
                f.close()
            raise
    run = RunResult(config=config, goldens=[
        {"path": str(f.path), "content_sha256": f.metadata["content_sha256"],
         "spec_version": f.metadata["spec_version"],
         "format_version": f.metadata["format_version"],
         "preset": f.metadata["grid"]["preset"]} for f in files])
    try:
        selected = []
        for f in files:
            for e in sorted(f.entries, key=lambda e: (e["group"], e["row"])):
                if config.api == "seeded" and e["family"] != "seeded":
                    continue
                if keyword and not keyword(e["id"]):
                    continue
                selected.append((f, e))
        if not selected:
            raise HarnessError("no case selected: nothing to check (the -k expression or "
                               "--api seeded filtered out every case)")
        groups: dict = {}
        for f, e in selected:
            groups.setdefault((id(f), e["group"]), []).append((f, e))
        # Every part the check judges by is verified against its seal before anything
        # runs (a part that does not stay in the reader's cache is read again below).
        parts = {"backward": ("forward", "grad"), "inference": ("forward", "inference")
                 }.get(config.api, ("forward",))
        for members in groups.values():
            members[0][0].require(members[0][1]["group"], parts)
        check_groups(config, invoker, ([f.case(e["id"]) for f, e in members]
                                       for members in groups.values()),
                     len(selected), run, progress)
    finally:
        invoker.close()
        for f in files:
            f.close()
    run.seconds = time.perf_counter() - t0
    return run


def outside_profile(gc, config: CheckConfig, prof):
    """The :class:`resblock.spec.store_range.Overflow` that puts a case outside a storage
    profile (spec 8.6, 12.4), or None: always None under a profile that stores float32
    and for the backward (which no storage profile covers)."""
    if not prof.stores_low or config.api == "backward":
        return None
    return gc.outside_profile(prof, inference=config.api == "inference")


def check_groups(config: CheckConfig, invoker, groups, total: int, run: RunResult,
                 progress=None) -> None:
    """Run every case of ``groups`` (lists of cases of one shape, each a GoldenCase or a
    case with the same interface) with ``invoker`` and judge it into ``run``: results,
    expected failures, the worst failures' pitfalls and error maps."""
    prof = tolerance.profile(config.profile)
    xfails = read_xfail(config.xfail) if config.xfail else []
    used_xfail = set()
    done = 0
    candidates: list = []  # (worst score, n, res, gc, result): the worst failures
    for gcs in groups:
        gcs = list(gcs)
        outside = {gc.id: o for gc in gcs
                   if (o := outside_profile(gc, config, prof)) is not None}
        ran = [gc for gc in gcs if gc.id not in outside]
        outcomes = dict(zip((gc.id for gc in ran), invoker.run(ran) if ran else [],
                            strict=True))
        for gc in gcs:
            if gc.id in outside:  # not run: the case tests the type's range, not the port
                xf = xfail_for(gc.id, xfails)
                if xf is not None:
                    used_xfail.add(xf.line)
                run.results.append(CaseResult(id=gc.id, family=gc.case.family,
                                              status="skip", message=outside[gc.id].reason))
                done += 1
                if progress is not None:
                    progress(done, total, run.results[-1])
                continue
            outcome = outcomes[gc.id]
            res = judge(gc, outcome, config, prof)
            if outcome.error is not None and config.diagnose and config.api != "inference":
                from resblock.conformance.mistakes.diagnose import diagnose_error

                res.pitfall = diagnose_error(gc, outcome.error)
                if res.pitfall:
                    run.pitfalls[res.pitfall] += 1
            xf = xfail_for(gc.id, xfails)
            if xf is not None:
                used_xfail.add(xf.line)
                res.xfail_reason = xf.reason
                res.status = "xpass" if res.status == "pass" else "xfail"
            if res.status in ("fail", "xfail") and (config.diagnose or config.details) \
                    and res.tensors:
                item = (res.worst_score, done, res, gc, outcome.result)
                if len(candidates) < max(config.max_diagnosed, config.details):
                    heapq.heappush(candidates, item)
                else:
                    heapq.heappushpop(candidates, item)
            run.results.append(res)
            done += 1
            if progress is not None:
                progress(done, total, res)
    from resblock.conformance.mistakes.diagnose import diagnose_case

    worst_first = sorted(candidates, key=lambda c: (-c[0], c[1]))
    diagnosed = worst_first[:config.max_diagnosed] if config.diagnose else []
    for _, _, res, gc, result in diagnosed:
        res.pitfall = diagnose_case(gc, result, config, prof)
        if res.pitfall:
            run.pitfalls[res.pitfall] += 1
    if config.details and config.api != "backward":
        from resblock.conformance.judging.details import case_detail

        for _, _, res, gc, result in worst_first[:config.details]:
            detail = case_detail(gc, result, config, prof, res.stage)
            if detail is not None:
                run.details[res.id] = detail
    run.stale_xfail = [f"{config.xfail}:{e.line}: {e.pattern} matches no checked case"
                       for e in xfails if e.line not in used_xfail]
