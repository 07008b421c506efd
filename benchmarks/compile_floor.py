"""The compilation floor of a preset (issue 17): a fresh process that lowers and compiles
the reference program of every shape group, ahead of time from abstract shapes, exactly as
the generator's compile worker does (the forward alone, or with ``grad`` the forward and
its VJP in one program), and runs nothing. Prints its wall time and the CPU seconds the
compilations took (XLA compiles on several threads).

A grid whose generation time is compilation (many small shape groups: the default
preset) cannot make ``generate --grad`` cost less, against forward-only generation, than
the ratio of these two floors.

    python benchmarks/compile_floor.py PRESET fwd|grad
"""

from __future__ import annotations

import resource
import sys
import time


def main(argv=None) -> int:
    preset, mode = (argv if argv is not None else sys.argv[1:])[:2]
    if mode not in ("fwd", "grad"):
        raise SystemExit(f"mode must be fwd or grad, got {mode!r}")
    from resblock.generator.engine import compile_forward
    from resblock.generator.grid import group_cases, preset_cases

    groups = group_cases(preset_cases(preset))
    compile_forward(groups[0][0], grad=mode == "grad")  # JAX's own first-use setup
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0 = ru.ru_utime + ru.ru_stime, time.perf_counter()
    for g in groups[1:]:
        compile_forward(g[0], grad=mode == "grad")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{time.perf_counter() - t0:.3f} {ru.ru_utime + ru.ru_stime - cpu0:.3f} "
          f"{len(groups) - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
