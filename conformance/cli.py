"""``resblock check``: validate an implementation against the goldens.

Exit codes: 0 conforms, 1 does not conform, 2 the harness could not run.
"""

from __future__ import annotations

import sys

import click

from resblock.options import PROFILE


@click.command("check")
@click.option("--impl", "impl", metavar="TARGET",
              help="package.module:function or path/to/file.py:function")
@click.option("--exec", "exec_", metavar="'PROGRAM ARGS {input} {output}'",
              help="Run a program per shape group (protocol: spec/PROGRAM_PROTOCOL.md).")
@click.option("--onnx", "onnx_file", metavar="MODEL.onnx", type=click.Path(dir_okay=False),
              help="Run an exported model file in ONNX Runtime (CPU), one session per case "
                   "with the case's parameters in place of the file's weights (spec "
                   "section 12.7); --api inference (an eval export) or functional (a "
                   "training-mode export), by default the file's mode; the layout is read "
                   "from the graph.")
@click.option("--api", type=click.Choice(["functional", "seeded", "backward", "inference"]),
              default="functional", show_default=True,
              help="functional: forward(x, params, batch_stats), the training-mode block; "
                   "seeded: f(seed, x, features); backward: backward(x, params, batch_stats, "
                   "y_bar) -> (x_bar, params_bar), judged on the gradient goldens (spec "
                   "section 10); inference: infer(x, params, batch_stats) -> y, BatchNorm "
                   "with the given running statistics (model.eval(), deployment engines; "
                   "spec section 12).")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]), default=None,
              help="The implementation's layout; the kit converts.  [default: nhwc; "
                   "with --onnx, the graph's]")
@click.option("--goldens", "goldens", multiple=True, type=click.Path(dir_okay=False),
              help="Golden files (default: the committed set). Repeatable.")
@click.option("-k", "keyword", metavar="EXPR", help="Select cases: words with and/or/not.")
@click.option("--xfail", type=click.Path(dir_okay=False), help="Expected failures file.")
@click.option("--profile", type=PROFILE, default="fp32",
              show_default=True)
@click.option("--json-report", type=click.Path(dir_okay=False), help="Write a JSON report.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML.")
@click.option("--html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report with error maps (needs resblock[html]).")
@click.option("--timeout", type=float, default=None,
              help="Seconds per case before the worker process is killed (default: none).")
@click.option("--in-process", is_flag=True,
              help="Run the implementation in the checker's own process (for a debugger); "
                   "an implementation that exits or crashes then ends the run.")
@click.option("--no-diagnose", is_flag=True, help="Skip naming pitfalls for failures.")
@click.option("--secret", is_flag=True,
              help="The graders' mode: cases drawn now from a secret seed, the oracle "
                   "computed after the implementation returns, the worker confined "
                   "(Landlock) where the platform has it; no golden file is read "
                   "(spec section 11).")
@click.option("--secret-seed", metavar="HEX",
              help="With --secret: the seed (hex digits) instead of a fresh os.urandom one, "
                   "to re-run a graders' check; printed after every --secret run.")
@click.option("--secret-preset", metavar="PRESET", default="default", show_default=True,
              help="With --secret: the generator preset whose shapes the secret grid "
                   "mirrors (seeded rows become functional).")
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def check(impl, exec_, onnx_file, api, layout, goldens, keyword, xfail, profile, json_report,
          junit, html, timeout, in_process, no_diagnose, secret, secret_seed, secret_preset, quiet):
    """Check an implementation against the float64 oracle of every golden case."""
    from resblock.conformance.judging.runner import CheckConfig, run_check
    from resblock.conformance.reporting import report
    from resblock.conformance.running import invoke
    from resblock.errors import HarnessError

    if sum(map(bool, (impl, exec_, onnx_file))) != 1:
        raise click.UsageError("give exactly one of --impl TARGET, --exec 'PROGRAM ...' or "
                               "--onnx MODEL.onnx")
    if onnx_file and (api not in ("inference", "functional") or secret or in_process
                      or timeout is not None):
        raise click.UsageError("--onnx runs an exported file in ONNX Runtime with --api "
                               "inference (an eval export) or --api functional (a "
                               "training-mode export); drop --api seeded/backward, --secret, "
                               "--in-process and --timeout")
    if exec_ and (api == "seeded" or layout not in (None, "nhwc")):
        raise click.UsageError("--exec programs use the NHWC protocol (functional, "
                               "--api backward or --api inference); drop --api "
                               "seeded/--layout")
    if (secret_seed or secret_preset != "default") and not secret:
        raise click.UsageError("--secret-seed and --secret-preset belong to --secret")
    if secret and (in_process or goldens or exec_ or api in ("seeded", "inference")):
        raise click.UsageError(
            "--secret runs an --impl (functional or --api backward) in a confined worker on "
            "cases it draws itself: drop --in-process (not isolated), --goldens (not read) "
            "and --exec / --api seeded / --api inference (not supported: spec section 11)")
    if in_process and (exec_ or timeout is not None):
        raise click.UsageError("--in-process runs an --impl without a worker process: it "
                               "cannot apply --timeout or --exec")
    import os

    # Resolved now: the implementation may change the working directory.
    json_report, junit = (os.path.abspath(p) if p else None for p in (json_report, junit))
    for opt, path in (("--json-report", json_report), ("--junit", junit)):
        if path and not os.path.isdir(os.path.dirname(path)):
            raise HarnessError(f"{opt} {path}: the folder {os.path.dirname(path)!r} does not "
                               "exist")
    if html:
        html = _html_path(html)
    block = None
    if onnx_file:
        from resblock.conformance.running.onnx_model import read_block

        given = click.get_current_context().get_parameter_source("api")
        block = read_block(onnx_file, None if given == click.core.ParameterSource.DEFAULT
                           else api, layout)
        api, layout = block.api, block.layout
        click.echo(f"{onnx_file}: x {block.x!r} ({layout.upper()}), y {block.y!r}, "
                   f"{block.form}" + ("; the kit folds each case's parameters (the file's "
                                      "own fold is not checked: SPEC 12.7)"
                                      if block.folded else ""))
    layout = layout or "nhwc"
    config = CheckConfig(target=impl or exec_ or onnx_file, api=api, layout=layout,
                         profile=profile, onnx=bool(onnx_file),
                         keyword=keyword, xfail=xfail, timeout=timeout,
                         diagnose=not no_diagnose, program=bool(exec_),
                         details=MAX_DETAILED if html or json_report else 0)
    if secret:
        from resblock.spec.secret import check_seed

        if secret_seed:
            check_seed(secret_seed)
    elif not goldens:
        from resblock.golden.cli import default_goldens

        goldens = default_goldens()
    if block is not None:
        from resblock.conformance.running.onnx_model import OnnxInvoker

        invoker = OnnxInvoker(block)
    elif exec_:
        invoker = invoke.Program(exec_, timeout, api)
    elif in_process:
        from resblock.conformance.running.targets import check_arity, load_target

        fn = load_target(impl)
        check_arity(fn, impl, api)
        invoker = invoke.InProcess(fn, api, layout)
    else:
        from resblock.conformance.running.worker import Worker

        invoker = Worker(impl, api, layout, timeout, confine=secret)
        invoker.start()  # imports the implementation while the goldens are verified

    err = click.get_text_stream("stderr")
    live = not quiet and err.isatty()

    def progress(done, total, res):
        if live:
            err.write(f"\r[{done}/{total}] {res.status:5s} {res.id:45s}")
            err.flush()

    try:
        if secret:
            from resblock.conformance.judging.secret import run_secret_check

            run = run_secret_check(config, invoker, seed=secret_seed or None,
                                   preset=secret_preset, progress=progress)
        else:
            run = run_check(config, invoker, goldens, progress=progress)
    except BaseException:  # refused goldens, a signal: the early worker must not linger
        invoker.close()
        raise
    if live:
        err.write("\r" + " " * 70 + "\r")
    click.echo(report.terminal_summary(run))
    try:
        if json_report:
            report.write_json(run, json_report)
        if junit:
            report.write_text_atomic(junit, report.junit_xml(run))
    except OSError as e:
        raise HarnessError(f"could not write the report: {e}") from None
    if html:
        from resblock.conformance.reporting import html as html_page

        try:
            html_page.write_html(html_page.render_report(report.json_report(run)), html)
        except OSError as e:
            raise HarnessError(f"could not write the HTML report: {e}") from None
    sys.exit(0 if run.conforms else 1)


MAX_DETAILED = 12  # failing cases whose error maps a JSON or HTML report carries


def _html_path(path: str) -> str:
    """Check before the run that an HTML report can be written: the folder exists and
    the ``html`` extra is installed (imported here only, never by a plain check)."""
    import importlib.util
    import os

    from resblock.errors import HarnessError

    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise HarnessError(f"--html {path}: the folder {os.path.dirname(path)!r} does not exist")
    if importlib.util.find_spec("jinja2") is None:
        raise HarnessError("--html needs Jinja2: pip install jinja2 (or, from a checkout "
                           "of the resblock repository, pip install '.[html]')")
    return path


# A saved report is read whole: its size is bounded before it is parsed.
DOCUMENT_MAX_BYTES = 512 * 2**20


def _read_document(path, schema: str):
    """A JSON document written by the kit, read defensively: bounded in size, parsed
    without recursion errors, every string valid Unicode, valid against ``schema``."""
    import json
    import os

    from resblock.errors import HarnessError
    from resblock.schemas import validate

    try:
        size = os.stat(path).st_size
        if size > DOCUMENT_MAX_BYTES:
            raise HarnessError(f"{path}: {size} bytes, more than a report of the kit "
                               f"holds ({DOCUMENT_MAX_BYTES}); refusing to read it")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except RecursionError:
        raise HarnessError(f"{path}: JSON nested too deeply to be a report of the kit") \
            from None
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: not a readable JSON file ({e})") from None
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(f"{path}: holds text that is not valid Unicode (a lone "
                           "surrogate escape); not a report of the kit") from None
    except RecursionError:
        raise HarnessError(f"{path}: JSON nested too deeply to be a report of the kit") \
            from None
    validate(doc, schema, where=str(path))
    return doc


@click.command("report")
@click.argument("report_json", metavar="REPORT.json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write.")
@click.option("--coverage", "coverage_json", type=click.Path(dir_okay=False),
              help="Add the detection matrix of a `resblock coverage` JSON document.")
def report_cmd(report_json, output, coverage_json):
    """Render a saved `resblock check --json-report` as a self-contained HTML page."""
    from resblock.conformance.reporting import html as html_page
    from resblock.errors import HarnessError

    output = _html_path(output)
    docs = [_read_document(report_json, "check-report")]
    if coverage_json:
        docs.append(_read_document(coverage_json, "coverage"))
    coverage = docs[1] if coverage_json else None
    if coverage is not None and any(len(r["scores"]) != len(coverage["cases"])
                                    or len(r.get("named", r["scores"])) != len(r["scores"])
                                    for r in coverage["rows"]):
        raise HarnessError(f"{coverage_json}: a row's scores do not match its case list "
                           "(the document was edited); write it again with `resblock "
                           "coverage --json`")
    try:
        page = html_page.render_report(docs[0], coverage)
    except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:
        # The schema admits what a check writes; a document edited into one that
        # contradicts itself (details whose maps do not fit their shape, ...) is refused.
        raise HarnessError(f"{report_json}: the report contradicts itself and cannot be "
                           f"drawn ({type(e).__name__}: {e}); write it again with `resblock "
                           "check --json-report`") from None
    try:
        html_page.write_html(page, output)
    except OSError as e:
        raise HarnessError(f"could not write the HTML report: {e}") from None
    click.echo(f"wrote {output}")
