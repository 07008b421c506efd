"""Probes of ``resblock check`` (issue 12): nothing an implementation does makes the gate
say CONFORMS, crash, hang or leave processes behind.

Each probe is a small misbehaving implementation run by the real command in a fresh
process (``python -m resblock``, started outside the repository so that the checkout's
top-level ``resblock/`` folder cannot shadow the installed package) against the session's
smoke golden (5 cases, one per shape group). The harness alone decides the exit status:
0 conforms, 1 does not conform, 2 it could not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "numpy_float32.py"

# A correct forward, loaded by path; each probe module misbehaves around it.
GOOD = f"""
import importlib.util as _u
_s = _u.spec_from_file_location("_probe_example", {str(EXAMPLE)!r})
_m = _u.module_from_spec(_s)
_s.loader.exec_module(_m)
good = _m.forward
"""

# One behaviour per shape group of the smoke set, chosen by the case's shape.
PER_CASE = GOOD + """
import ctypes, os
def forward(x, params, stats):
    n, h, w, c = x.shape
    if (h, w) == (1, 1):
        os._exit(0)                       # ends the process with status 0
    if (h, w) == (3, 5):
        ctypes.string_at(0)               # segmentation fault
    if (h, w) == (3, 3):
        raise ValueError("nul\\x00 esc\\x1b[31m surrogate \\udc80 end")
    if n == 1:
        raise GeneratorExit("not an Exception subclass")
    y, s = good(x, params, stats)
    return y, s, {"conv1": object()}      # a malformed intermediates dict
"""


def resblock(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "resblock", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return f"{p}:forward"


def alive(pid: int) -> bool:
    """True for a running process (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def gone(pids, wait_s: float = 10.0) -> bool:
    """Whether every process of ``pids`` has ended within ``wait_s`` (a loaded machine
    takes a moment to finish a SIGKILL)."""
    deadline = time.monotonic() + wait_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def wait_for_pids(proc, path, count: int, wait_s: float = 60.0) -> list[int]:
    """The ``count`` process ids a probe writes to ``path`` once it runs, waiting while
    the checker ``proc`` is alive."""
    deadline = time.monotonic() + wait_s
    while not (path.exists() and len(path.read_text().split()) == count):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    return [int(p) for p in path.read_text().split()]


def no_traceback(r):
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.fixture(scope="module")
def smoke(smoke_golden):
    return smoke_golden[0]


@pytest.mark.parametrize("ending", ["import sys\nsys.exit(0)\n", "exit()\n",
                                    "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_an_implementation_that_exits_at_import_is_a_harness_error(tmp_path, smoke, ending):
    target = write(tmp_path, "student.py", GOOD + "forward = good\n" + ending)
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    no_traceback(r)


def test_each_misbehaving_case_is_an_error_and_the_run_goes_on(tmp_path, smoke):
    target = write(tmp_path, "probe.py", PER_CASE)
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, "--junit", "j.xml",
                 "--json-report", "r.json", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    no_traceback(r)
    assert "DOES NOT CONFORM: 0 passed, 5 failed (5 errors)" in r.stdout
    out = r.stdout
    assert "ended the worker process with exit status 0" in out
    assert "crashed the worker process (killed by signal SIGSEGV)" in out
    assert "raised GeneratorExit" in out
    assert "nul\\x00 esc\\x1b[31m surrogate \\udc80 end" in out  # escaped, not raw
    assert "\x00" not in out and "\x1b" not in out
    assert "intermediate 'conv1' is a object, which is not an array" in out
    suite = ET.parse(tmp_path / "j.xml").getroot()  # well-formed whatever was raised
    assert suite.get("errors") == "5"


def test_later_cases_still_run_after_a_worker_dies(tmp_path, smoke):
    # Dies on the first call only: the restarted worker checks the other four cases.
    target = write(tmp_path, "once.py", GOOD + """
import os
_marker = os.path.join(os.path.dirname(__file__), "died")
def forward(x, params, stats):
    if not os.path.exists(_marker):
        open(_marker, "w").close()
        os._exit(3)
    return good(x, params, stats)
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1
    assert "4 passed, 1 failed (1 errors)" in r.stdout
    assert "crashed the worker process (exit status 3)" in r.stdout


def test_missing_running_statistics_are_a_contract_error(tmp_path, smoke):
    target = write(tmp_path, "nostats.py", GOOD + """
def forward(x, params, stats):
    return good(x, params, stats)[0], None
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1
    assert "forward returned no new batch_stats (None)" in r.stdout


def test_a_run_where_every_case_is_an_expected_failure_does_not_conform(tmp_path, smoke):
    target = write(tmp_path, "zeros.py", """
import numpy as np
def forward(x, params, stats):
    return np.zeros_like(x), stats
""")
    (tmp_path / "known.txt").write_text("*  # all of them\n")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, "--xfail", "known.txt",
                 cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert "DOES NOT CONFORM: 0 passed" in r.stdout
    assert "no case passed" in r.stdout


def test_relative_report_paths_do_not_follow_the_implementations_chdir(tmp_path, smoke):
    (tmp_path / "elsewhere").mkdir()
    target = write(tmp_path, "wander.py", GOOD + """
import os
def forward(x, params, stats):
    os.chdir(os.path.join(os.path.dirname(__file__), "elsewhere"))
    return good(x, params, stats)
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, "--in-process",
                 "--json-report", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "r.json").is_file() and not (tmp_path / "elsewhere" / "r.json").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e12", "0"])
def test_bad_timeouts_are_one_line_errors(tmp_path, smoke, value):
    r = resblock("check", "-q", "--impl", f"{EXAMPLE}:forward", "--goldens", smoke,
                 "--timeout", value, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("Error: --timeout"), r.stderr
    no_traceback(r)


def test_sigterm_ends_the_checker_its_worker_and_their_children(tmp_path, smoke):
    pids = tmp_path / "pids"
    target = write(tmp_path, "hang.py", f"""
import os, subprocess, time
def forward(x, params, stats):
    child = subprocess.Popen(["sleep", "600"])
    with open({str(pids)!r}, "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(600)
""")
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "check", "-q", "--impl", target,
                             "--goldens", str(smoke)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        worker, child = wait_for_pids(proc, pids, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, out + err
    assert "interrupted by SIGTERM" in err
    assert gone([worker, child])


def test_a_timeout_kills_the_implementations_children(tmp_path, smoke):
    pids = tmp_path / "pids"
    target = write(tmp_path, "spawns.py", f"""
import subprocess, time
def forward(x, params, stats):
    child = subprocess.Popen(["sleep", "600"])
    with open({str(pids)!r}, "a") as f:
        f.write(f"{{child.pid}}\\n")
    time.sleep(600)
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, "-k", "stress",
                 "--timeout", "0.5", cwd=tmp_path)
    # both cases time out; the identical message is printed once, with its count
    assert r.returncode == 1 and r.stdout.count("timed out after 0.5 s") == 1, r.stdout
    assert "(the same error in 2 cases)" in r.stdout and "2 failed (2 errors)" in r.stdout
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert gone(children)


def test_in_process_is_asked_for_and_cannot_take_a_timeout(tmp_path, smoke):
    r = resblock("check", "-q", "--impl", f"{EXAMPLE}:forward", "--goldens", smoke,
                 "--in-process", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = resblock("check", "-q", "--impl", f"{EXAMPLE}:forward", "--goldens", smoke,
                 "--in-process", "--timeout", "5", cwd=tmp_path)
    assert r.returncode == 2 and "--in-process" in r.stderr


def test_an_unconvertible_result_is_a_case_error(tmp_path, smoke):
    target = write(tmp_path, "weird.py", GOOD + """
class Refuses:
    def __array__(self, *a, **k):
        raise RuntimeError("no")
def forward(x, params, stats):
    y, s = good(x, params, stats)
    s["BatchNorm_0"]["mean"] = Refuses()
    return y, s
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, "--in-process",
                 cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    no_traceback(r)
    assert "converting the Refuses to a NumPy array failed" in r.stdout


def test_program_output_is_bounded_and_a_lingering_child_does_not_hang(tmp_path):
    from resblock.conformance.running import program

    prog = tmp_path / "noisy.sh"
    prog.write_text("#!/bin/sh\n"
                    "head -c 20000000 /dev/zero\n"      # 20 MB on stdout
                    "sleep 600 &\n"                     # keeps stdout open after exit
                    "echo $! > \"$3\"\n"
                    "exit 0\n")
    prog.chmod(0o755)
    t0 = time.monotonic()
    code, out, err, _, timed_out = program.run_process(
        [str(prog), "in", "out", str(tmp_path / "child")], timeout=60)
    assert time.monotonic() - t0 < 20 and code == 0 and not timed_out
    assert len(out) <= program.OUTPUT_KEEP_BYTES + 100 and "earlier bytes not kept" in out
    child = int((tmp_path / "child").read_text())
    assert gone([child])


def test_program_output_is_drained_in_bounded_memory():
    from resblock.conformance.running.program import OUTPUT_KEEP_BYTES, OutputTail

    proc = subprocess.Popen(["head", "-c", "20000000", "/dev/zero"], stdout=subprocess.PIPE)
    tail = OutputTail(proc.stdout)
    proc.wait()
    text = tail.text(30)
    proc.stdout.close()
    assert len(tail.data) <= 2 * OUTPUT_KEEP_BYTES + 2**16  # never more than that held
    assert text.startswith("[... ") and len(text) < OUTPUT_KEEP_BYTES + 100


def test_sigterm_ends_an_exec_program_its_children_and_its_folder(tmp_path, smoke):
    pids, tmp = tmp_path / "pids", tmp_path / "tmp"
    tmp.mkdir()
    prog = tmp_path / "hang.sh"
    prog.write_text(f"#!/bin/sh\nsleep 600 &\necho $$ $! > {pids}\nwait\n")
    prog.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "check", "-q", "--exec",
                             f"{prog} {{input}} {{output}}", "--goldens", str(smoke)],
                            cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        program, child = wait_for_pids(proc, pids, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "interrupted by SIGTERM" in err, out + err
    assert gone([program, child])
    assert os.listdir(tmp) == []  # the program's input/output folder is gone


def test_a_killed_checker_takes_its_worker_along(tmp_path, smoke):
    # SIGKILL cannot be handled: the kernel ends the worker (PR_SET_PDEATHSIG, Linux).
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    pids = tmp_path / "pids"
    target = write(tmp_path, "hang.py", f"""
import os, time
def forward(x, params, stats):
    with open({str(pids)!r}, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
""")
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "check", "-q", "--impl", target,
                             "--goldens", str(smoke)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        (worker,) = wait_for_pids(proc, pids, 1)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert gone([worker])


# -- issue 20: what comes back from the worker cannot run code in the checker --------------

REDUCE = GOOD + """
import os
class Boom:
    def __reduce__(self):
        return ({call}, ({arg!r},))
def forward(x, params, stats):
    y, s = good(x, params, stats)
    s["BatchNorm_0"]["mean"] = Boom()
    return y, s
"""


@pytest.mark.parametrize("call", ["os._exit", "os.system"])
def test_a_result_that_would_run_code_when_unpickled_is_only_described(tmp_path, smoke, call):
    marker = tmp_path / "ran"
    arg = 0 if call == "os._exit" else f"touch {marker}"
    target = write(tmp_path, "reduce.py", REDUCE.format(call=call, arg=arg))
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    no_traceback(r)
    assert "DOES NOT CONFORM: 0 passed, 5 failed (5 errors)" in r.stdout
    assert "batch_stats BatchNorm_0/mean is a Boom, which is not an array" in r.stdout
    assert not marker.exists()


def test_an_object_of_the_implementations_own_class_is_a_contract_error(tmp_path, smoke):
    target = write(tmp_path, "own.py", GOOD + """
class Result(tuple):
    pass
class Mine:
    pass
def forward(x, params, stats):
    y, s = good(x, params, stats)
    if x.shape[1] == 1:
        return Mine()
    return Result((y, s))                 # a tuple subclass travels as a plain tuple
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    no_traceback(r)
    assert "4 passed, 1 failed (1 errors)" in r.stdout
    assert "forward returned Mine; expected a tuple" in r.stdout


def test_garbage_on_the_result_pipe_is_a_case_error(tmp_path, smoke):
    target = write(tmp_path, "garbage.py", GOOD + """
import os, stat, struct
def forward(x, params, stats):
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, struct.pack("!i", 7) + b"\\x80\\x04garb")
        except OSError:
            pass
    return good(x, params, stats)
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    no_traceback(r)
    assert "0 passed, 5 failed (5 errors)" in r.stdout
    assert "the worker's reply is not a valid header (UnicodeDecodeError)" in r.stdout


def test_a_huge_returned_array_is_refused_unread(tmp_path, smoke):
    # 1 GiB of float32 as y: the checker refuses it from its declared size; its own peak
    # memory stays far below the array's size (it read none of it).
    target = write(tmp_path, "huge.py", GOOD + """
import numpy as np
def forward(x, params, stats):
    y, s = good(x, params, stats)
    if x.shape[1] == 1:
        return np.zeros(1 << 28, np.float32), s
    return y, s
""")
    runner = tmp_path / "run.py"
    # VmHWM, not ru_maxrss: Linux carries the forking pytest's peak across exec into the
    # latter
    runner.write_text("import sys\nfrom resblock.cli import cli\n"
                      "try:\n    cli(prog_name='resblock')\n"
                      "finally:\n    print('maxrss_kb', [line.split()[1] for line in "
                      "open('/proc/self/status') if line.startswith('VmHWM')][0], "
                      "file=sys.stderr)\n")
    r = subprocess.run([sys.executable, str(runner), "check", "-q", "--impl", target,
                        "--goldens", str(smoke)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "4 passed, 1 failed (1 errors)" in r.stdout
    assert "returned an array of 1073741824 bytes (float32 (268435456,))" in r.stdout
    assert "refused unread" in r.stdout
    maxrss_kb = int(r.stderr.split("maxrss_kb")[1].split()[0])
    assert maxrss_kb < 600 * 1024, maxrss_kb


def test_extra_keys_in_the_returned_batch_stats_are_refused(tmp_path, smoke):
    target = write(tmp_path, "extra.py", GOOD + """
def forward(x, params, stats):
    y, s = good(x, params, stats)
    s["BatchNorm_0"]["count"] = s["BatchNorm_0"]["mean"]
    s["BatchNorm_2"] = {}
    return y, s
""")
    r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "0 passed, 5 failed (5 errors)" in r.stdout
    assert ("new batch_stats has keys the contract does not have: 'BatchNorm_2', "
            "BatchNorm_0/count") in r.stdout


# -- issue 20: no process outlives the check ---------------------------------------------

ESCAPES = GOOD + """
import os, subprocess, sys
PIDS = {pids!r}
def _note(pid):
    with open(PIDS, "a") as f:
        f.write(f"{{pid}}\\n")
def forward(x, params, stats):
    _note(subprocess.Popen(["sleep", "600"], start_new_session=True).pid)
    _note(subprocess.Popen(["sleep", "600"], process_group=0).pid)
    r, w = os.pipe()
    if os.fork() == 0:                    # double fork with setsid: an orphan daemon
        os.setsid()
        pid = os.fork()
        if pid:
            os.write(w, str(pid).encode())
        else:
            os.execvp("sleep", ["sleep", "600"])
        os._exit(0)
    os.close(w)
    _note(int(os.read(r, 32)))
    os.close(r)
    return good(x, params, stats)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper: Linux only")
@pytest.mark.parametrize("mode", ["check", "pytest"])
def test_escaping_children_end_with_a_conforming_run(tmp_path, smoke, mode):
    pids = tmp_path / "pids"
    target = write(tmp_path, "daemon.py", ESCAPES.format(pids=str(pids)))
    if mode == "check":
        r = resblock("check", "-q", "--impl", target, "--goldens", smoke, cwd=tmp_path)
    else:
        (tmp_path / "test_nothing.py").write_text("")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--resblock-impl", target, "--resblock-goldens", str(smoke)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 15  # three per case, five cases
    assert gone(started)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper: Linux only")
def test_a_killed_checker_takes_the_implementations_daemons_along(tmp_path, smoke):
    pids = tmp_path / "pids"
    target = write(tmp_path, "hang.py", ESCAPES.format(pids=str(pids)).replace(
        "    return good(x, params, stats)", "    import time; time.sleep(600)"))
    proc = subprocess.Popen([sys.executable, "-m", "resblock", "check", "-q", "--impl", target,
                             "--goldens", str(smoke)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        started = wait_for_pids(proc, pids, 3)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert gone(started)
