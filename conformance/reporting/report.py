"""Reports of a conformance run: terminal summary, JSON (schema ``check-report``), JUnit.

Pure formatting of a :class:`~resblock.conformance.judging.runner.RunResult`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections import Counter
from xml.etree import ElementTree as ET

from resblock import __version__
from resblock.conformance.running.invoke import clean_text
from resblock.spec.constants import SPEC_VERSION

ORDER = {"error": 0, "fail": 1, "xpass": 2, "xfail": 3, "pass": 4, "skip": 5}


def repro_line(run, case_id: str) -> str:
    """A command that re-runs exactly this case with the same settings."""
    import shlex

    c = run.config
    parts = ["resblock", "check"]
    if c.onnx:
        parts += ["--onnx", c.target, "--api", c.api]
    else:
        parts += ["--exec", c.target] if c.program else ["--impl", c.target]
        if not c.program:
            parts += ["--api", c.api, "--layout", c.layout]
    parts += ["--profile", c.profile]
    from resblock.golden.cli import default_goldens

    used = [g["path"] for g in run.goldens]
    if run.secret is not None:
        parts += ["--secret", "--secret-seed", run.secret["seed"], "--secret-preset",
                  run.secret["preset"]]
    elif sorted(map(_real, used)) != sorted(map(_real, default_goldens())):
        for g in used:
            parts += ["--goldens", g]
    if c.timeout is not None:
        parts += ["--timeout", f"{c.timeout:g}"]
    parts += ["-k", case_id]
    return " ".join(shlex.quote(p) for p in parts)


def _real(path: str) -> str:
    import os

    return os.path.realpath(path)


def tensor_line(t, layout: str) -> str:
    """One failing tensor in one line: how many elements are out of bound, the max abs and
    rel errors, and the worst element (index in ``layout``) with expected, got and bound."""
    axes = ("".join(layout) if t.name in ("output", "x_bar") else
            "hwio" if t.name.endswith("kernel_bar") else "c")  # kernel grads: kit's HWIO
    idx = ",".join(map(str, t.worst_index))
    line = (f"{t.name}: {t.n_bad}/{t.size} ({100 * t.share_bad:.1f}%) out of bound; max abs "
            f"{t.max_abs:.3g}, max rel {t.max_rel:.3g}; worst [{axes}]=[{idx}] expected "
            f"{t.expected:.7g} got {t.got:.7g} (bound {t.bound:.3g}, score {t.worst_score:.3g})")
    if t.aggregate is not None:
        verdict = "fails" if t.aggregate > 1 else "passes"
        line += (f"; aggregate {verdict}: mean squared normalised error {t.aggregate_q:.3g} "
                 f"of the allowed {t.aggregate_limit:.3g} (score {t.aggregate:.3g})")
    return line


def terminal_summary(run, max_cases: int = 10) -> str:
    from resblock.conformance.mistakes.pitfalls import lookup

    c = run.config
    against = (f"on {run.secret['cases']} secret cases (graders' mode, preset "
               f"{run.secret['preset']})" if run.secret is not None else
               f"against {', '.join(g['path'] for g in run.goldens)}")
    lines = [f"resblock check: {c.target} (api {c.api}, layout {c.layout}, profile "
             f"{c.profile}) {against}"]
    fams = sorted({r.family for r in run.results})
    for fam in fams:
        cnt = Counter(r.status for r in run.results if r.family == fam)
        lines.append(f"  {fam:11s} " + ", ".join(f"{cnt[s]} {s}" for s in ORDER if cnt[s]))
    bad = sorted((r for r in run.results if r.status in ("fail", "error", "xpass")),
                 key=lambda r: (ORDER[r.status], -r.worst_score))
    if bad:
        lines.append("")
        lines.append("worst cases:")
    # An error raised the same way by many cases is printed once, with its count.
    same = Counter(r.message for r in bad if r.status == "error" and r.message)
    shown: dict = {}
    for r in bad[:max_cases]:
        head = f"  {r.status.upper():5s} {r.id}"
        if r.tensors:
            head += f"  worst score {r.worst_score:.3g}"
        if r.stage:
            head += f"  first diverging stage: {r.stage}"
        if r.pitfall:
            head += f"  matches pitfall: {r.pitfall}"
        lines.append(head)
        if r.status == "error" and r.message in shown:
            lines.append(f"        the same error as {shown[r.message]}")
        elif r.message:
            lines.extend("        " + m for m in r.message.splitlines())
            if r.status == "error" and same[r.message] > 1:
                shown[r.message] = r.id
                lines.append(f"        (the same error in {same[r.message]} cases)")
        for t in r.failing_tensors:
            lines.append("        " + tensor_line(t, c.layout))
        lines.append("        repro: " + repro_line(run, r.id))
    if len(bad) > max_cases:
        lines.append(f"  ... and {len(bad) - max_cases} more (see --json-report)")
    skipped = [r for r in run.results if r.status == "skip"]
    if skipped:
        lines.append("")
        lines.append(f"outside the profile, not run (spec 8.6: a value a conforming "
                     f"{c.profile} port stores overflows its type):")
        for r in skipped[:max_cases]:
            lines.append(f"  SKIP  {r.id}: {r.message}")
        if len(skipped) > max_cases:
            lines.append(f"  ... and {len(skipped) - max_cases} more (see --json-report)")
    if run.pitfalls:
        lines.append("")
        lines.append("named pitfalls (failing results match a known mistake):")
        failing = sum(r.status in ("fail", "xfail") and bool(r.tensors) for r in run.results)
        if failing > c.max_diagnosed:
            lines.append(f"  (only the {c.max_diagnosed} worst of the {failing} failing cases "
                         "were diagnosed: the counts below are out of those)")
        for name, n in run.pitfalls.most_common():
            p = lookup(name)
            lines.append(f"  {name} ({n} cases): {p.explanation}")
            lines.append(f"      fix: {p.fix_for(c.api)}")
    for s in run.stale_xfail:
        lines.append(f"warning: stale xfail entry {s}")
    for r in run.results:
        if r.status == "xpass":
            lines.append(f"warning: {r.id} is listed in --xfail ({r.xfail_reason}) but passes; "
                         "remove the entry")
    n = len(run.results)
    verdict = "CONFORMS" if run.conforms else "DOES NOT CONFORM"
    lines.append("")
    if run.results and not run.conforms and not any(r.status in ("fail", "error")
                                                    for r in run.results):
        why = ("listed in --xfail" if not skipped else "outside the profile" if
               all(r.status == "skip" for r in run.results) else
               "outside the profile or listed in --xfail")
        lines.append(f"no case passed: every selected case is {why}, so nothing was checked")
    passed = [r for r in run.results if r.status == "pass" and r.tensors]
    if run.conforms and passed:
        worst = max(passed, key=lambda r: r.worst_score)
        margin = (f", a margin of {1 / worst.worst_score:.1f}x" if worst.worst_score > 0
                  else "")
        lines.append(f"worst score {worst.worst_score:.3g} of the allowed 1 ({worst.id}"
                     f"{margin})")
        aggs = [(t.aggregate, r.id, t.name) for r in passed for t in r.tensors
                if t.aggregate is not None]
        if aggs:
            a, cid, name = max(aggs)
            lines.append(f"aggregate test (spec 8.5): worst mean squared normalised error "
                         f"{a:.3g} of its limit ({cid}, {name})")
        else:
            lines.append("aggregate test (spec 8.5): not applied, the golden file has no "
                         "spreads (format 3); regenerate it to apply it")
    if run.secret is not None:
        lines.append(f"graders' mode: secret seed {run.secret['seed']} (re-run with "
                     f"--secret-seed); isolation: {run.secret['isolation']}")
    lines.append(f"{verdict}: {run.count('pass')} passed, "
                 f"{run.count('fail') + run.count('error')} failed "
                 f"({run.count('error')} errors), {run.count('xfail')} xfailed, "
                 f"{run.count('xpass')} xpassed"
                 + (f", {len(skipped)} skipped (outside the profile)" if skipped else "")
                 + f" of {n} cases in {run.seconds:.1f}s")
    return "\n".join(lines)


def json_report(run) -> dict:
    from resblock.conformance.mistakes.pitfalls import lookup

    c = run.config
    return {
        "report_version": "1.1.0",
        "kit_version": __version__,
        "spec_version": SPEC_VERSION,
        "created": _dt.datetime.now(tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "target": c.target,
        "api": c.api,
        "layout": c.layout,
        "profile": c.profile,
        "goldens": run.goldens,
        **({"secret": run.secret} if run.secret is not None else {}),
        "verdict": "conforms" if run.conforms else "does_not_conform",
        "summary": {s: run.count(s) for s in ORDER} | {"total": len(run.results)},
        "seconds": round(run.seconds, 3),
        "pitfalls": [{"name": k, "cases": v, "explanation": lookup(k).explanation,
                      "fix": lookup(k).fix_for(c.api)} for k, v in run.pitfalls.most_common()],
        "stale_xfail": run.stale_xfail,
        "cases": [
            {"id": r.id, "family": r.family, "status": r.status, "message": r.message,
             "worst_score": r.worst_score if r.worst_score != float("inf") else "inf",
             "pitfall": r.pitfall, "stage": r.stage, "xfail_reason": r.xfail_reason,
             "seconds": round(r.seconds, 6),
             "tensors": [t.to_dict() for t in r.tensors]}
            | ({"repro": repro_line(run, r.id)} if r.status not in ("pass", "skip") else {})
            | ({"details": run.details[r.id]} if r.id in run.details else {})
            for r in run.results
        ],
    }


def write_json(run, path) -> None:
    from resblock.schemas import validate

    doc = json_report(run)
    validate(doc, "check-report", where="the JSON report")
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


def write_text_atomic(path, text: str) -> None:
    """Write ``path`` whole or not at all: a full disk, a signal or a crash leaves the
    previous file (or none), never a truncated report; the temporary file is removed.

    A path that is (or links to) something other than a regular file, ``/dev/null``,
    ``/dev/stdout``, a FIFO or a shell's ``>(...)``, is written into as it is: renaming
    over it would replace the device or the pipe with a file. A link to a regular file
    keeps its link; its target is replaced."""
    import os
    import stat
    import tempfile

    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    mask = os.umask(0)
    os.umask(mask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~mask)  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def junit_xml(run) -> str:
    """JUnit XML as GitHub, GitLab and Jenkins render it: one testcase per golden case."""
    suite = ET.Element("testsuite", name="resblock", tests=str(len(run.results)),
                       failures=str(run.count("fail")), errors=str(run.count("error")),
                       skipped=str(run.count("xfail") + run.count("skip")),
                       time=f"{run.seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("target", run.config.target), ("profile", run.config.profile),
                 ("api", run.config.api), ("spec_version", SPEC_VERSION)):
        ET.SubElement(props, "property", name=k, value=clean_text(str(v)))
    for r in run.results:
        tc = ET.SubElement(suite, "testcase", classname=f"resblock.{r.family}", name=r.id,
                           time=f"{r.seconds:.6f}")
        detail = "\n".join([r.message] + [tensor_line(t, run.config.layout)
                                           for t in r.failing_tensors]
                           + [f"repro: {repro_line(run, r.id)}"])
        if r.pitfall:
            detail += (f"\nmatches pitfall {r.pitfall}: "
                       f"{_pitfall_fix(r.pitfall, run.config.api)}")
        detail = clean_text(detail)  # XML 1.0 cannot hold NUL, ESC, lone surrogates, ...
        first = clean_text(r.message.splitlines()[0]) if r.message else ""
        if r.status == "fail":
            ET.SubElement(tc, "failure", message=first or "out of tolerance").text = detail
        elif r.status == "error":
            ET.SubElement(tc, "error", message=first or "error").text = detail
        elif r.status == "xfail":
            ET.SubElement(tc, "skipped", message=f"xfail: {r.xfail_reason}")
        elif r.status == "skip":
            ET.SubElement(tc, "skipped", message=clean_text(r.message))
        elif r.status == "xpass":
            ET.SubElement(tc, "system-out").text = f"XPASS: listed in --xfail ({r.xfail_reason})"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode")


def _pitfall_fix(name, api: str):
    from resblock.conformance.mistakes.pitfalls import lookup

    return lookup(name).fix_for(api)
