"""Run an implementation written in any language: the ``resblock-program/1`` protocol.

``resblock check --exec 'PROGRAM ARGS {input} {output}'`` runs an external program once
per batch of cases. The normative description is ``spec/PROGRAM_PROTOCOL.md``; in short:

- ``{input}`` is a directory with ``cases.json`` (schema ``program-io``), ``cases.txt``
  (``resblock-program/1`` then one ``DIR N H W C`` line per case, for programs without
  a JSON parser) and one directory per case of raw little-endian float32 C-order files
  (``x.bin``, ``Conv_0.kernel.bin``, ..., ``BatchNorm_1.var.bin``).
- ``{output}`` is a directory that already holds one empty directory per case; the
  program writes ``y.bin`` and the four updated running stats into each.
- Exit status 0 means "outputs written"; a timeout, a non-zero status or a signal makes
  every case of the batch fail with the same message, which quotes the end of stderr.

The argv is ``shlex.split`` of the template with the placeholders substituted as whole
arguments, and the program runs without a shell, so paths with spaces need no quoting.

The layer stack is: :func:`parse_exec` (template -> argv), :func:`write_inputs` (arrays
-> files), :func:`run_program` (one subprocess), :func:`read_outputs` (files -> arrays
or per-case messages). Pure Python and NumPy: importing this never imports JAX.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from resblock import interrupts
from resblock.conformance.running.program_files import (  # noqa: F401 - re-exported API
    PROTOCOL,
    ProgramError,
    read_outputs,
    write_inputs,
)
from resblock.errors import TargetError

INPUT_PLACEHOLDER = "{input}"
OUTPUT_PLACEHOLDER = "{output}"
STDERR_TAIL_LINES = 20



class BatchResult(dict):
    """``{case_id: (y, new_batch_stats) | ProgramError}`` of one run, plus its context.

    Attributes:
      argv: the command line that ran, with placeholders substituted.
      returncode: the exit status (negative: killed by that signal; None: timed out).
      stdout: what the program wrote on stdout, decoded as UTF-8 (default: "").
      stderr: what the program wrote on stderr, decoded as UTF-8 (default: "").
      wall_s: wall-clock seconds the program ran.
    """

    def __init__(self, *args, argv=(), returncode=None, stdout="", stderr="", wall_s=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.wall_s = wall_s


# --------------------------------------------------------------------------- argv


def parse_exec(template: str) -> list[str]:
    """Split an ``--exec`` template into argv and check that the program can run.

    ``{input}`` and ``{output}`` must each appear as a whole argument. A program given
    as a path (it contains ``/``) must be an executable file, relative to the current
    directory; a bare name is looked up on ``PATH`` with :func:`shutil.which`.

    Raises:
      TargetError: the template is empty or unparsable, a placeholder is missing or
        embedded in a longer argument, or the program is not found or not executable.
    """
    try:
        argv = shlex.split(template)
    except ValueError as e:
        raise TargetError(
            f"cannot parse --exec {template!r}: {e}; quote it the way a POSIX shell would"
        ) from None
    example = "e.g. --exec './my_block {input} {output}'"
    if not argv:
        raise TargetError(f"--exec is empty; give the program and its arguments, {example}")
    for ph in (INPUT_PLACEHOLDER, OUTPUT_PLACEHOLDER):
        if ph in argv[1:]:
            continue
        embedded = [a for a in argv if ph in a]
        if embedded:
            raise TargetError(
                f"--exec {template!r}: {ph} must be a whole argument, found it inside "
                f"{embedded[0]!r}; the runner substitutes whole arguments only "
                f"(pass it separately, {example})"
            )
        raise TargetError(
            f"--exec {template!r} has no {ph} argument; the program is given the input "
            f"and output directories through {INPUT_PLACEHOLDER} and {OUTPUT_PLACEHOLDER}, "
            f"{example}"
        )
    _check_program(argv[0])
    return argv


def _check_program(program: str) -> None:
    if os.sep in program or (os.altsep and os.altsep in program):
        p = Path(program)
        if not p.exists():
            raise TargetError(
                f"program {program!r} does not exist (relative to {os.getcwd()!r}); "
                "build it first or fix the path"
            )
        if p.is_dir():
            raise TargetError(f"program {program!r} is a directory, not an executable file")
        if not os.access(p, os.X_OK):
            raise TargetError(
                f"program {program!r} is not executable; run `chmod +x {shlex.quote(program)}`"
            )
        return
    if shutil.which(program) is None:
        raise TargetError(
            f"program {program!r} not found on PATH; give its path (e.g. ./{program}) or install it"
        )


def _substitute(argv: Sequence[str], input_dir: Path, output_dir: Path) -> list[str]:
    table = {INPUT_PLACEHOLDER: str(input_dir), OUTPUT_PLACEHOLDER: str(output_dir)}
    return [argv[0]] + [table.get(a, a) for a in argv[1:]]


# --------------------------------------------------------------------------- files


def run_program(argv_template, cases, timeout=None, workdir=None,
                backward: bool = False, inference: bool = False) -> BatchResult:
    """Run the program once on a batch and return each case's outputs or error.

    Args:
      argv_template: an ``--exec`` string (checked by :func:`parse_exec`) or an argv list
        that already holds the ``{input}`` and ``{output}`` placeholders.
      cases: ``(case_id, x, params, batch_stats)`` tuples, as for :func:`write_inputs`.
      timeout: seconds before the program (and its process group) is killed (default:
        None, no limit).
      workdir: parent of the temporary directory (default: None, the system's temporary
        directory). The program itself runs in the current directory.
      backward: the backward mode (``resblock-program-backward/1``): cases carry
        ``y_bar`` as a fifth item and results are ``(x_bar, params_bar)``.
      inference: the inference mode (``resblock-program-inference/1``): ``batch_stats``
        are the running statistics and results are ``(y, None)``.

    Returns:
      A :class:`BatchResult`: ``{case_id: (y, new_batch_stats) | ProgramError}``. A
      timeout, a non-zero exit status or a signal fails every case of the batch with the
      same message, quoting the last lines of stderr; otherwise :func:`read_outputs`
      decides per case. The temporary directory is always removed.

    Raises:
      TargetError: the template is invalid or the program cannot be started.
    """
    if isinstance(argv_template, str):
        argv = parse_exec(argv_template)
    else:
        argv = parse_exec(shlex.join(str(a) for a in argv_template))  # same checks
    shown = shlex.join(argv)
    with tempfile.TemporaryDirectory(prefix="resblock-program-", dir=workdir) as tmp:
        input_dir, output_dir = Path(tmp, "input"), Path(tmp, "output")
        input_dir.mkdir()
        output_dir.mkdir()
        descriptor = write_inputs(input_dir, cases, backward, inference)
        for case in descriptor["cases"]:
            (output_dir / case["dir"]).mkdir()
        ids = [case["id"] for case in descriptor["cases"]]
        full_argv = _substitute(argv, input_dir, output_dir)
        try:
            returncode, stdout, stderr, wall_s, timed_out = run_process(full_argv, timeout)
        except OSError as e:
            raise TargetError(f"cannot start program `{shown}`: {e}") from None
        context = dict(
            argv=full_argv, returncode=returncode, stdout=stdout, stderr=stderr, wall_s=wall_s
        )
        if timed_out:
            msg = f"program `{shown}` timed out after {timeout:g}s and was killed"
            return BatchResult({i: ProgramError(msg + _tail(stderr)) for i in ids}, **context)
        if returncode != 0:
            msg = f"program `{shown}` {_describe_status(returncode)}"
            return BatchResult({i: ProgramError(msg + _tail(stderr)) for i in ids}, **context)
        results = read_outputs(output_dir, descriptor)
        for case_id, r in results.items():
            if isinstance(r, str):
                results[case_id] = ProgramError(
                    f"program `{shown}` exited with status 0 but {r}" + _tail(stderr)
                )
        return BatchResult(results, **context)


OUTPUT_KEEP_BYTES = 256 * 1024  # of stdout and of stderr each: the end is kept


class OutputTail:
    """Drain a pipe in a thread, keeping only its last ``keep`` bytes: a program that
    writes gigabytes costs no memory, and a full pipe never blocks it."""

    def __init__(self, pipe, keep: int = OUTPUT_KEEP_BYTES):
        import threading

        self.pipe, self.keep = pipe, keep
        self.data, self.dropped = bytearray(), 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        fd = self.pipe.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                self.data += chunk
                if len(self.data) > 2 * self.keep:
                    cut = len(self.data) - self.keep
                    self.dropped += cut
                    del self.data[:cut]
        except OSError:
            pass

    def text(self, wait_s: float) -> str:
        """What was kept, once EOF came or ``wait_s`` passed (a process that escaped the
        program's group may hold the pipe open: it is not waited for)."""
        self.thread.join(wait_s)
        data = bytes(self.data[-self.keep:])
        dropped = self.dropped + len(self.data) - len(data)
        head = f"[... {dropped} earlier bytes not kept ...]\n" if dropped else ""
        return head + _decode(data)


def _wait_unreaped(proc: subprocess.Popen, timeout) -> bool:
    """Wait until the program exits, without reaping it (its process group id stays
    valid for the kill that follows). False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None and info.si_pid:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(pause if deadline is None else min(pause, max(0.0, deadline -
                                                                  time.monotonic())))
        pause = min(pause * 2, 0.02)


def run_process(argv: list[str], timeout) -> tuple[int | None, str, str, float, bool]:
    """``subprocess.run(argv, timeout=..., capture_output=True)`` without a shell, except
    that the program runs in its own process group, which is killed as a whole when the
    program exits, times out or the checker is interrupted: a wrapper script's children
    cannot outlive it, nor keep the checker waiting by holding stdout open. Only the
    last :data:`OUTPUT_KEEP_BYTES` of stdout and of stderr are kept.

    Returns ``(returncode, stdout, stderr, wall_s, timed_out)``; returncode is None when
    the program timed out.
    """
    start = time.monotonic()
    with interrupts.deferred() as pending:  # a signal now would orphan the program
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        out, err = OutputTail(proc.stdout), OutputTail(proc.stderr)
    timed_out = False
    try:
        pending.raise_now()
        timed_out = not _wait_unreaped(proc, timeout)
    finally:
        _kill_group(proc)  # also on exit: nothing the program started survives it
        proc.wait()
        stdout, stderr = out.text(2.0), err.text(2.0)
        for pipe in (proc.stdout, proc.stderr):
            if not out.thread.is_alive() and not err.thread.is_alive():
                pipe.close()
    wall_s = time.monotonic() - start
    if timed_out:
        return None, stdout, stderr, wall_s, True
    return proc.returncode, stdout, stderr, wall_s, False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-returncode})"
    msg = f"exited with status {returncode} (expected 0)"
    if returncode > 128:
        try:
            name = signal.Signals(returncode - 128).name
            msg += f"; a shell reports a child killed by {name} this way"
        except ValueError:
            pass
    return msg


def _decode(data) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def _tail(stderr: str) -> str:
    lines = stderr.rstrip("\n").splitlines()
    if not lines:
        return "; stderr was empty"
    head = (
        f"last {STDERR_TAIL_LINES} of {len(lines)} lines of stderr"
        if len(lines) > STDERR_TAIL_LINES
        else "stderr"
    )
    return f"\n--- {head} ---\n" + "\n".join(lines[-STDERR_TAIL_LINES:])
