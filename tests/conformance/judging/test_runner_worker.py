"""The worker process of the conformance run (conformance/judging/runner.py's ``run_check`` over
worker.py's ``Worker``, as with --timeout): a hanging case is killed at the timeout and
the run finishes, a crash is reported with its signal and a fresh worker runs the next
case, a result that cannot be sent back is a case error, and a target that does not load,
or whose import kills the worker, is a harness error (exit code 2 in the CLI).
"""

import pytest
from click.testing import CliRunner
from test_runner import GOLDENS, TWO_1X1, statuses

from resblock.cli import cli
from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.running.worker import Worker
from resblock.errors import TargetError

# --- worker process: timeouts and crashes ---------------------------------------------

SLEEPER = "import time\n\ndef forward(x, params, batch_stats):\n    time.sleep(60)\n"
CRASHER = """\
import os
import signal

from resblock.conformance.mistakes.variants import make_forward

_good = make_forward("correct_float32")


def forward(x, params, batch_stats):
    if x.shape[1] == 1 and x.shape[2] == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _good(x, params, batch_stats)
"""


def test_timeout_kills_hanging_cases_and_the_run_finishes(tmp_path):
    f = tmp_path / "sleeper.py"
    f.write_text(SLEEPER)
    target = f"{f}:forward"
    cfg = CheckConfig(target=target, keyword=TWO_1X1, timeout=1.0)
    worker = Worker(target, "functional", "nhwc", 1.0)
    run = run_check(cfg, worker, GOLDENS)
    assert [r.id for r in run.results] == ["seeded-normal-n1-1x1-f4-s0",
                                           "seeded-normal-n1-1x1-f4-s1"]
    for r in run.results:
        assert r.status == "error"
        assert r.message == "timed out after 1 s (--timeout); the worker was killed"
        assert 0.9 <= r.seconds < 10
    assert worker.proc is None  # killed, not left sleeping
    assert run.seconds < 40


def test_crashing_implementation_is_reported_with_the_signal(tmp_path):
    f = tmp_path / "crasher.py"
    f.write_text(CRASHER)
    target = f"{f}:forward"
    keyword = TWO_1X1 + " or seeded-normal-n1-2x2-f2-s0"
    cfg = CheckConfig(target=target, keyword=keyword, timeout=30.0)
    run = run_check(cfg, Worker(target, "functional", "nhwc", 30.0), GOLDENS)
    got = {r.id: r for r in run.results}
    assert len(got) == 3
    for i in ("seeded-normal-n1-1x1-f4-s0", "seeded-normal-n1-1x1-f4-s1"):
        assert got[i].status == "error"
        assert got[i].message == ("the implementation crashed the worker process "
                                  "(killed by signal SIGSEGV)")
    # A fresh worker is started after a crash: the next case runs normally.
    assert got["seeded-normal-n1-2x2-f2-s0"].status == "pass"


UNPICKLABLE = """\
import threading

from resblock.conformance.mistakes.variants import make_forward

_good = make_forward("correct_float32")


def forward(x, params, batch_stats):
    y, stats = _good(x, params, batch_stats)
    return y, stats, {"conv1": threading.Lock()}
"""


def test_worker_result_that_cannot_be_sent_back_is_a_case_error(tmp_path):
    f = tmp_path / "unpicklable.py"
    f.write_text(UNPICKLABLE)
    target = f"{f}:forward"
    cfg = CheckConfig(target=target, keyword=TWO_1X1, timeout=30.0)
    run = run_check(cfg, Worker(target, "functional", "nhwc", 30.0), GOLDENS)
    assert len(run.results) == 2 and statuses(run) == {"error"}
    # described by the worker, never pickled (issue 20)
    assert run.results[1].message == ("intermediate 'conv1' is a lock, which is not an array "
                                      "(expected NumPy, JAX, PyTorch or an object with "
                                      "__array__)")


def test_worker_dying_while_importing_the_target_is_a_harness_error(tmp_path):
    # BUG (conformance/running/worker.py, Worker._start): when the worker process dies while
    # importing the target (os._exit, a segfaulting extension module), parent.recv()
    # raises EOFError, which escapes run_check; click turns it into "Aborted!" and exit
    # status 1 ("does not conform"). Suggested: catch EOFError/OSError around recv() in
    # _start, join the process and raise TargetError("--impl ...: the worker process
    # died while importing the target (exit status 3)") -> exit 2.
    f = tmp_path / "dies.py"
    f.write_text("import os\n\nos._exit(3)\n")
    r = CliRunner().invoke(cli, ["check", "-q", "--impl", f"{f}:forward", "--timeout", "5",
                                 "-k", TWO_1X1])
    assert r.exit_code == 2, r.output
    assert "Error: " in r.output


def test_worker_reports_a_target_that_does_not_load(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("raise ImportError('needs a GPU build')\n")
    cfg = CheckConfig(target=f"{f}:forward", keyword=TWO_1X1, timeout=5.0)
    with pytest.raises(TargetError, match="needs a GPU build"):
        run_check(cfg, Worker(f"{f}:forward", "functional", "nhwc", 5.0), GOLDENS)
