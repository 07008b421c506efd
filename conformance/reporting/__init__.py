"""Reporting a run: the terminal summary, the JSON report and JUnit XML (``report``) and
the self-contained HTML pages, their SVG drawn by hand (``html``, with ``templates/``)."""
