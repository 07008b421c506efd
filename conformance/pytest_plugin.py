"""pytest plugin: ``pytest --resblock-impl TARGET`` turns every golden case into a test.

Registered through the ``pytest11`` entry point, so a project adds the gate to its own
suite with no code. Options mirror ``resblock check``: the implementation runs in the same
isolated worker process (``os._exit`` or a crash in it is that case's failure, never the
end of pytest; whatever it starts ends with the session), unless
``--resblock-in-process`` asks for pytest's own process (for a debugger).
``--resblock-onnx MODEL.onnx`` gates an exported file instead, run in ONNX Runtime as
``resblock check --onnx`` runs it (its mode and layout read from the graph unless
``--resblock-api`` / ``--resblock-layout`` say otherwise).
"""

from __future__ import annotations

import pytest

from resblock.options import profile_names


def pytest_addoption(parser):
    g = parser.getgroup("resblock", "ResNet basic block conformance (resblock)")
    g.addoption("--resblock-impl", metavar="TARGET", default=None,
                help="module:function or file.py:function to check against the goldens")
    g.addoption("--resblock-onnx", metavar="MODEL.onnx", default=None,
                help="an exported ONNX file to check instead, run in ONNX Runtime (as "
                     "resblock check --onnx)")
    g.addoption("--resblock-api", choices=["functional", "seeded", "backward", "inference"],
                default=None, help="default functional; with --resblock-onnx, the file's")
    g.addoption("--resblock-layout", choices=["nhwc", "nchw"], default=None,
                help="default nhwc; with --resblock-onnx, the graph's")
    g.addoption("--resblock-profile", default="fp32", metavar="|".join(profile_names()),
                help="tolerance profile (spec section 8.2; a renamed one says its new name)")
    g.addoption("--resblock-goldens", action="append", default=None, metavar="PATH")
    g.addoption("--resblock-timeout", type=float, default=None, metavar="SECONDS",
                help="a case that runs longer is an error (not with --resblock-in-process)")
    g.addoption("--resblock-in-process", action="store_true", default=False,
                help="call the implementation in pytest's own process (not isolated: an "
                     "os._exit or a crash in it ends pytest)")


class ResblockItem(pytest.Item):
    def __init__(self, *, gc_id, state, **kw):
        super().__init__(**kw)
        self.gc_id = gc_id
        self.state = state

    def runtest(self):
        from resblock.conformance.judging.runner import judge, outside_profile
        from resblock.conformance.mistakes.diagnose import diagnose_case, diagnose_error

        cfg, prof, files, invoker = self.state
        for f in files:
            if self.gc_id in f._by_id:
                gc = f.case(self.gc_id)
                break
        outside = outside_profile(gc, cfg, prof)
        if outside is not None:  # spec 8.6: the case tests the type's range, not the port
            pytest.skip(f"outside the {cfg.profile} profile: {outside.reason}")
        outcome = invoker.run([gc])[0]
        res = judge(gc, outcome, cfg, prof)
        if res.status != "pass":
            from resblock.conformance.reporting.report import tensor_line

            lines = [res.message] + [tensor_line(t, cfg.layout) for t in res.failing_tensors]
            pit = None
            if res.tensors:
                pit = diagnose_case(gc, outcome.result, cfg, prof)
            elif outcome.error is not None and cfg.api != "inference":
                pit = diagnose_error(gc, outcome.error)
            if pit:
                from resblock.conformance.mistakes.pitfalls import lookup

                lines.append(f"matches pitfall {pit}: {lookup(pit).fix_for(cfg.api)}")
            raise ResblockFailure("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ResblockFailure):
            return f"{self.gc_id} does not conform:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"resblock: {self.gc_id}"


class ResblockFailure(AssertionError):
    pass


class ResblockCollector(pytest.Collector):
    def __init__(self, *, state, ids, **kw):
        super().__init__(**kw)
        self.state, self.ids = state, ids

    def collect(self):
        for i in self.ids:
            yield ResblockItem.from_parent(self, name=i, gc_id=i, state=self.state)


_OPEN_FILES: list = []  # golden files, then the worker: closed at the end of the session


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Adds one item per golden case (before -k deselection runs, hence tryfirst)."""
    target = config.getoption("--resblock-impl")
    onnx_file = config.getoption("--resblock-onnx")
    if not target and not onnx_file:
        return
    from resblock.conformance.judging.runner import CheckConfig, open_goldens
    from resblock.conformance.running.invoke import InProcess
    from resblock.conformance.running.targets import load_target
    from resblock.conformance.running.worker import Worker
    from resblock.errors import HarnessError
    from resblock.golden.cli import default_goldens
    from resblock.spec import tolerance

    in_process = config.getoption("--resblock-in-process")
    timeout = config.getoption("--resblock-timeout")
    api, layout = config.getoption("--resblock-api"), config.getoption("--resblock-layout")
    if target and onnx_file:
        raise pytest.UsageError("resblock: give one of --resblock-impl TARGET and "
                                "--resblock-onnx MODEL.onnx, not both")
    if onnx_file and (in_process or timeout is not None
                      or api not in (None, "inference", "functional")):
        raise pytest.UsageError("resblock: --resblock-onnx runs the file in ONNX Runtime with "
                                "--resblock-api inference (an eval export) or functional (a "
                                "training-mode export); drop --resblock-api seeded/backward, "
                                "--resblock-in-process and --resblock-timeout")
    if in_process and timeout is not None:
        raise pytest.UsageError("resblock: --resblock-timeout needs the worker process; "
                                "drop --resblock-in-process")
    if timeout is not None and not timeout > 0:
        raise pytest.UsageError(f"resblock: --resblock-timeout must be a positive number "
                                f"of seconds, got {timeout}")
    invoker = None
    try:
        if onnx_file:
            from resblock.conformance.running.onnx_model import OnnxInvoker, read_block

            block = read_block(onnx_file, api, layout)
            cfg = CheckConfig(target=onnx_file, api=block.api, layout=block.layout,
                              profile=config.getoption("--resblock-profile"), onnx=True)
            invoker = OnnxInvoker(block)
        else:
            cfg = CheckConfig(target=target, api=api or "functional", layout=layout or "nhwc",
                              profile=config.getoption("--resblock-profile"))
            if in_process:
                invoker = InProcess(load_target(target), cfg.api, cfg.layout)
            else:  # started first: it loads the target while the goldens are opened
                invoker = Worker(target, cfg.api, cfg.layout, timeout)
                invoker.start()
        files = open_goldens(config.getoption("--resblock-goldens") or default_goldens())
        _OPEN_FILES.extend(files)
        if cfg.api == "backward":
            from resblock.conformance.judging.runner import check_gradients

            check_gradients(files)
        elif cfg.api == "inference":
            from resblock.conformance.judging.runner import check_inference_data

            check_inference_data(files)
        if not in_process and not onnx_file:
            invoker.wait_ready()
    except HarnessError as e:
        if invoker is not None:
            invoker.close()
        raise pytest.UsageError(f"resblock: {e}") from None
    _OPEN_FILES.append(invoker)
    state = (cfg, tolerance.profile(cfg.profile), files, invoker)
    ids = [e["id"] for f in files for e in f.entries
           if cfg.api != "seeded" or e["family"] == "seeded"]
    collector = ResblockCollector.from_parent(session, name="resblock", state=state, ids=ids)
    items.extend(collector.collect())


def pytest_unconfigure(config):
    while _OPEN_FILES:
        _OPEN_FILES.pop().close()
