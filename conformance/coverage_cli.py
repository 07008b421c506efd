"""``resblock coverage``: the detection matrix of a golden set (a thin click layer over
:mod:`resblock.conformance.mistakes.coverage`).

Exit codes: 0 every correct algorithm conforms and every pitfall is rejected and named by
at least ``--min-cases`` cases under ``fp32``; 1 otherwise; 2 the harness could not run.
"""

from __future__ import annotations

import sys

import click

from resblock.options import PROFILE, profile_names


@click.command("coverage")
@click.option("--goldens", "goldens", multiple=True, type=click.Path(dir_okay=False),
              help="Golden files (default: the committed set). Repeatable.")
@click.option("--profile", "profiles", multiple=True,
              type=PROFILE,
              help="Profiles to evaluate (default: all). Repeatable.")
@click.option("--zoo", "zoo", default="all", show_default=True, metavar="NAMES|all|none",
              help="Comma-separated zoo algorithms to run (conformance/mistakes/zoo.py).")
@click.option("--min-cases", default=2, show_default=True, type=click.IntRange(min=1),
              help="Cases that must reject and name each pitfall under fp32.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the matrix as JSON (kind resblock-coverage).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="Write the matrix as a self-contained HTML page (needs resblock[html]).")
@click.option("--markdown", is_flag=True,
              help="Print the design document's coverage table instead of the summary.")
def coverage_cmd(goldens, profiles, zoo, min_cases, json_out, html_out, markdown):
    """Which case rejects which mistake; every correct algorithm's worst score."""
    import json
    import os

    from resblock.conformance.mistakes import coverage as cov_mod
    from resblock.conformance.mistakes.zoo import ZOO_BY_NAME
    from resblock.errors import HarnessError

    if zoo == "all":
        zoo_names = None
    elif zoo == "none":
        zoo_names = ()
    else:
        zoo_names = tuple(z.strip() for z in zoo.split(",") if z.strip())
        unknown = sorted(set(zoo_names) - set(ZOO_BY_NAME))
        if unknown:
            raise HarnessError(f"--zoo: unknown algorithm(s) {', '.join(unknown)}; known: "
                               f"{', '.join(ZOO_BY_NAME)}")
    for opt, path in (("--json", json_out), ("--html", html_out)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise HarnessError(f"{opt} {path}: the folder does not exist")
    if not goldens:
        from resblock.golden.cli import default_goldens

        goldens = default_goldens()
    profiles = profiles or profile_names()
    err = click.get_text_stream("stderr")

    def progress(done, case_id):
        if err.isatty():
            err.write(f"\r[{done}] {case_id:50s}")
            err.flush()

    cov = cov_mod.coverage(goldens, profiles=profiles, zoo_names=zoo_names, progress=progress)
    if err.isatty():
        err.write("\r" + " " * 60 + "\r")
    if json_out:
        from resblock.conformance.reporting.report import write_text_atomic

        write_text_atomic(json_out, json.dumps(cov, indent=1))
    if html_out:
        from resblock.conformance.reporting import html as html_page

        html_page.write_html(html_page.render_coverage(cov), html_out)
    if markdown:
        click.echo(cov_mod.markdown_table(cov))
    else:
        click.echo(cov_mod.text_report(cov))
    problems = cov_mod.problems(cov, min_cases)
    for p in problems:
        click.echo(f"  problem: {p}", err=True)
    sys.exit(1 if problems else 0)
