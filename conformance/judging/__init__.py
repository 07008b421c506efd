"""Judging results: selecting cases (``select``: ``-k`` and ``--xfail``), comparing each
tensor with the float64 oracle within its budget (``compare``), the verdict of a case and
of a run (``runner``) and the per-tensor evidence kept for the worst failures
(``details``)."""
