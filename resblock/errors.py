"""One error root for the kit, with specific subclasses (pip-tools style).

Every message says what was found, what was expected, and what to do.
The CLI maps :class:`HarnessError` subclasses to exit code 2.
"""


class ResblockError(Exception):
    """Root of every error the kit raises on purpose."""


class SpecError(ResblockError, ValueError):
    """An input violates a precondition of the specification (e.g. C != features)."""


class HarnessError(ResblockError):
    """The kit itself could not do its job (bad arguments, unreadable files)."""


class GridError(HarnessError):
    """A case grid is empty, malformed or has duplicate ids."""


class GoldenFormatError(HarnessError):
    """A golden file is unreadable, truncated, schema-invalid or fails its hashes."""


class SchemaError(GoldenFormatError):
    """A JSON document does not validate against its schema."""


class TargetError(HarnessError):
    """An implementation target cannot be imported or called."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind (removing temporary files, killing
    workers) exactly as for Ctrl-C, then exit with code 2. A ``KeyboardInterrupt``
    subclass so that no ``except Exception`` in user or library code swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
