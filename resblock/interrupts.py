"""Where a termination signal may not interrupt: starting a child process.

``resblock``'s handlers (``resblock.cli.install_signal_handlers``) turn SIGINT, SIGTERM
and SIGHUP into :class:`resblock.errors.Interrupted`, which unwinds through ``finally``
blocks that end what the run started. One window defeats that: a signal that arrives
while ``subprocess.Popen`` returns, after the child has started but before the caller
holds it, leaves a child nobody ends (on a loaded machine a program can start, write its
pid and wait before ``Popen`` has returned). Inside :func:`deferred` the handler records
the signal instead of raising; :meth:`Pending.raise_now` raises it where the caller's
``finally`` will end the child.
"""

from __future__ import annotations

from contextlib import contextmanager

_pending: list[list[int]] = []  # one list per open deferral, innermost last


class Pending:
    """Signals recorded inside one :func:`deferred` block."""

    def __init__(self):
        self.signals: list[int] = []

    def raise_now(self) -> None:
        """Raise the first recorded signal as :class:`resblock.errors.Interrupted`."""
        if self.signals:
            from resblock.errors import Interrupted

            raise Interrupted(self.signals[0])


@contextmanager
def deferred():
    """Record termination signals instead of raising them; yields a :class:`Pending`."""
    pending = Pending()
    _pending.append(pending.signals)
    try:
        yield pending
    finally:
        _pending.remove(pending.signals)


def defer(signum: int) -> bool:
    """Called by the signal handler: True when the signal was recorded for later."""
    if _pending:
        _pending[-1].append(signum)
        return True
    return False
