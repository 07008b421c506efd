"""resblock.conformance: ``resblock check`` and ``resblock coverage``.

One sub-package per job: ``running`` (an implementation), ``mistakes`` (the pitfall table,
its twins, the diagnosis, the zoo), ``judging`` (selection, comparison, verdicts) and
``reporting`` (text, JSON, JUnit, HTML); ``cli``, ``coverage_cli``, ``pytest_plugin`` and
``convert`` are the layers users touch.
"""
