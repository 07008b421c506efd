"""The ``resblock`` command: a thin click group; each folder owns its commands.

Exit codes: 0 success / conforms, 1 does not conform or verification failed,
2 the harness could not run (bad arguments, unreadable files, bad target).
Importing this module imports click only, so ``resblock --help`` starts fast.
"""

from __future__ import annotations

import sys

import click

from resblock import __version__


class _Group(click.Group):
    """Maps the kit's own HarnessError to a one-line message and exit code 2."""

    def invoke(self, ctx):
        from resblock.errors import HarnessError, SpecError

        try:
            return super().invoke(ctx)
        except (HarnessError, SpecError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            import signal

            name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
            click.echo(f"Error: interrupted by {name}; nothing was concluded (temporary "
                       "files removed, worker processes ended)", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("Error: out of memory; the input is larger than this machine can "
                       "hold (see the estimate options of the command)", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `resblock list | head`: the reader left; say nothing
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(2)
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            click.echo(f"Error: {e.strerror or e}{where}", err=True)
            sys.exit(2)


def _raise_interrupted(signum, frame):
    from resblock import interrupts
    from resblock.errors import Interrupted

    if interrupts.defer(signum):  # starting a child: raised once the caller holds it
        return
    raise Interrupted(signum)


def _redeliver_swallowed(unraisable, _default=sys.unraisablehook):
    """A signal that arrives while Python runs a ``__del__`` or a gc callback raises
    there, where the exception is printed and dropped; deliver it again a moment later,
    so that the run still stops."""
    from resblock.errors import Interrupted

    if isinstance(unraisable.exc_value, Interrupted):
        import os
        import threading

        signum = unraisable.exc_value.signum
        timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    _default(unraisable)


def install_signal_handlers():
    """SIGINT, SIGTERM and SIGHUP unwind (cleanup in ``finally`` blocks, exit 2); a signal
    the caller set to be ignored (``nohup``) stays ignored."""
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _raise_interrupted)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupted)
    sys.unraisablehook = _redeliver_swallowed


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resblock")
def cli():
    """Golden data and conformance checks for the ResNet basic block."""


def _register():
    from resblock.conformance.cli import check, report_cmd
    from resblock.conformance.coverage_cli import coverage_cmd
    from resblock.generator.cli import generate
    from resblock.golden.cli import diff, list_cases, merge, show, verify
    from resblock.spec.cli import spec

    for cmd in (generate, verify, list_cases, show, spec, check, report_cmd, coverage_cmd,
                merge, diff):
        cli.add_command(cmd)


_register()


def main():
    """Console entry point. Exits without interpreter teardown: destroying XLA's runtime
    costs ~0.3 s per command, and NumPy, h5py and jsonschema's ~0.07 s, while nothing is
    left to flush (golden files are closed and renamed, reports written atomically,
    workers and programs ended, standard streams flushed here)."""
    import os

    code = 0
    install_signal_handlers()
    try:
        cli(prog_name="resblock")
    except SystemExit as e:
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
            code = 1
        else:
            code = e.code or 0
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `resblock list | head`: the reader has gone
        pass
    os._exit(code)
