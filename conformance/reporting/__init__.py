"""Reporting a run: the terminal summary, the JSON report and JUnit XML (``report``) and
the self-contained HTML pages (``html``, drawn by ``html_svg``, from ``templates/``)."""
