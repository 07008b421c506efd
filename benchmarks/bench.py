"""Speed and memory benchmarks (issue 4): ratios measured side by side in one run.

    python benchmarks/bench.py [--quick] [--repeats N] [--out benchmarks/RESULTS.txt]

Every timing is a whole fresh process (interpreter start, imports, compilation, work,
output), measured alternately (baseline, ours, baseline, ours, ...) and reported as
medians. "cold": no persistent compilation cache; "warm": each side with its own
JAX_COMPILATION_CACHE_DIR, populated by one earlier run of the same command (the naive
loop with JAX's default caching thresholds, which skip compilations under 1 s; the
generator caches all of its programs); "warm*": the same, but the naive loop's
thresholds lowered to cache everything too (the baseline's best case).
No timed assertions anywhere: this script prints numbers; the correctness checks it
makes (verify, agreement with the baseline) are asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(cmd, env=None, cwd=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.perf_counter() - t


def env_with(**kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    e.update({k: str(v) for k, v in kw.items()})
    return e


def warm_env(cache: Path, cache_everything: bool):
    """JAX_COMPILATION_CACHE_DIR for both sides. The generator then caches every program
    (it lowers JAX's 1 s threshold itself); the naive loop gets JAX's defaults, unless
    ``cache_everything`` also lowers its thresholds (the baseline's best case)."""
    if cache_everything:
        return env_with(JAX_COMPILATION_CACHE_DIR=cache,
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0,
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1)
    return env_with(JAX_COMPILATION_CACHE_DIR=cache)


def generation(preset: str, repeats: int, tmp: Path, lines: list[str]):
    gen_out = tmp / f"{preset}.h5"
    naive_out = tmp / f"{preset}-naive.npz"
    gen = [PY, "-m", "resblock", "generate", "--preset", preset, "-o", str(gen_out), "--force"]
    naive = [PY, str(ROOT / "benchmarks" / "naive_loop.py"), preset, str(naive_out)]
    results = {}
    for mode in ("cold", "warm", "warm*"):
        caches = {k: tmp / f"cache-{k}-{preset}-{mode}" for k in ("naive", "gen")}
        envs = {k: (env_with() if mode == "cold" else warm_env(v, mode == "warm*"))
                for k, v in caches.items()}
        if mode != "cold":  # populate each side's cache once
            run(naive, envs["naive"])
            run(gen, envs["gen"])
        t_naive, t_gen = [], []
        for _ in range(repeats):
            t_naive.append(run(naive, envs["naive"]))
            t_gen.append(run(gen, envs["gen"]))
        mn, mg = statistics.median(t_naive), statistics.median(t_gen)
        results[mode] = (mn, mg)
        lines.append(f"  {preset:8s} {mode:5s}: naive loop {mn:7.2f} s, resblock generate "
                     f"{mg:6.2f} s  -> {mn / mg:5.1f}x  (medians of {repeats})")
    check_outputs(gen_out, naive_out, lines)
    return results


def check_outputs(gen_out: Path, naive_out: Path, lines):
    """The generator's golden passes verify and agrees with the naive loop's outputs."""
    import numpy as np

    from resblock.golden.reader import GoldenFile
    from resblock.golden.verify import verify_file
    from resblock.spec import tolerance

    v = verify_file(gen_out)
    assert v.ok, v.problems[:3]
    naive = np.load(naive_out)
    prof = tolerance.profile("fp32")
    worst_naive = worst_diff = 0.0
    with GoldenFile(gen_out) as gf:
        for gc in gf.iter_cases():
            y = naive[gc.id]
            s = tolerance.scores(y, gc.reference("output"), gc.bound("output", prof))
            worst_naive = max(worst_naive, float(s.max()))
            worst_diff = max(worst_diff, float(np.abs(y - gc.arrays["y"]).max()))
    assert worst_naive <= 1.0, f"naive loop output out of tolerance: {worst_naive}"
    lines.append(f"           verify ok; naive-loop outputs score {worst_naive:.3g} against the "
                 f"oracle; max |generate - naive| = {worst_diff:.3g}")


def efficiency(lines):
    """Steady-state 56x56x64 forward vs FLOPs and XLA's conv throughput, same process."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from resblock.generator.batched import derive_cases
    from resblock.spec import error_model, oracle
    from resblock.spec.cases import Case
    from resblock.spec.reference import apply_block, full_precision

    case = Case("seeded", "normal", 1, 56, 56, 64, 0)
    ((x, p, s),) = derive_cases([case])
    flops = 2 * 2 * 1 * 56 * 56 * 64 * 64 * 9
    with full_precision():
        fwd = jax.jit(apply_block)
        jax.block_until_ready(fwd(x, p, s))
        conv = jax.jit(lambda a, k: lax.conv_general_dilated(
            a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST))
        k = jnp.asarray(p["Conv_0"]["kernel"])
        jax.block_until_ready(conv(x, k))

        def best(f, n=20):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                jax.block_until_ready(f())
                ts.append(time.perf_counter() - t)
            return min(ts)

        t_fwd = best(lambda: fwd(x, p, s))
        t_conv = best(lambda: conv(x, k))
    t0 = time.perf_counter()
    oracle.forward(x, p, s)
    t_oracle = time.perf_counter() - t0
    conv_rate = flops / 2 / t_conv
    fwd_rate = flops / t_fwd
    lines.append(f"  56x56x64 forward: {t_fwd * 1e3:.2f} ms = {fwd_rate / 1e9:.1f} GFLOP/s; one "
                 f"XLA conv alone: {conv_rate / 1e9:.1f} GFLOP/s -> forward at "
                 f"{fwd_rate / conv_rate:.0%} of XLA conv throughput")
    ref = oracle.forward(x, p, s)
    t0 = time.perf_counter()
    error_model.budgets(x, p, s, ref.stages)
    t_budget = time.perf_counter() - t0
    lines.append(f"  float64 oracle (NumPy) for the same case: {t_oracle * 1e3:.1f} ms "
                 f"({t_oracle / t_fwd:.1f}x the float32 forward); error-model budgets "
                 f"{t_budget * 1e3:.1f} ms ({t_budget / t_oracle:.2f}x the oracle)")


def shares(preset: str, lines):
    """Where in-process generation time goes: the reference forward (with its compile),
    the float64 oracle, and the error model's budgets (same cases, one process)."""
    from resblock.generator.batched import derive_cases
    from resblock.generator.engine import ReferenceRunner
    from resblock.generator.grid import group_cases, preset_cases
    from resblock.spec import error_model, oracle

    groups = group_cases(preset_cases(preset))
    t = dict.fromkeys(("derive", "reference", "oracle", "budgets"), 0.0)
    t0 = time.perf_counter()
    inputs = derive_cases([c for g in groups for c in g])
    t["derive"] = time.perf_counter() - t0
    runner = ReferenceRunner()
    it = iter(inputs)
    for g in groups:
        for _ in g:
            x, p, s = next(it)
            t0 = time.perf_counter()
            runner(x, p, s)
            t1 = time.perf_counter()
            ref = oracle.forward(x, p, s)
            t2 = time.perf_counter()
            error_model.budgets(x, p, s, ref.stages)
            t3 = time.perf_counter()
            t["reference"] += t1 - t0
            t["oracle"] += t2 - t1
            t["budgets"] += t3 - t2
    total = sum(t.values())
    lines.append(f"  {preset:8s} in-process {total:6.2f} s: " + ", ".join(
        f"{k} {v:.2f} s ({v / total:.0%})" for k, v in t.items())
        + f"; budgets / oracle {t['budgets'] / t['oracle']:.2f}x")


def check_overhead(repeats: int, lines):
    from resblock.golden.cli import default_goldens

    goldens = default_goldens()
    check = [PY, "-m", "resblock", "check", "--impl",
             str(ROOT / "benchmarks" / "zero_cost.py") + ":forward", "-q"]
    plain = [PY, str(ROOT / "benchmarks" / "plain_read.py"), *goldens]
    numpy_check = [PY, "-m", "resblock", "check", "--impl",
                   str(ROOT / "examples" / "numpy_float32.py") + ":forward", "-q"]
    tc, tp, ti = [], [], []
    for _ in range(repeats):
        tp.append(run(plain))
        tc.append(run(check))
        ti.append(run(check + ["--in-process"]))
    mc, mp, mi = statistics.median(tc), statistics.median(tp), statistics.median(ti)
    lines.append(f"  check, zero-cost impl, default set: {mc:.2f} s vs plain h5py+NumPy read "
                 f"{mp:.2f} s -> {mc / mp:.2f}x (target <= 3x); --in-process {mi:.2f} s -> "
                 f"{mi / mp:.2f}x (the worker process costs {mc - mi:+.2f} s)")
    th, tk, tn = [], [], []
    for _ in range(repeats):
        tk.append(run([PY, "-c", "import click"]))
        th.append(run([PY, "-m", "resblock", "--help"]))
        tn.append(run(numpy_check))
    mh, mk, mn = statistics.median(th), statistics.median(tk), statistics.median(tn)
    lines.append(f"  resblock --help {mh:.3f} s vs python -c 'import click' {mk:.3f} s -> "
                 f"{mh / mk:.2f}x (target <= 2x)")
    lines.append(f"  resblock check (NumPy float32 impl, whole default set): {mn:.2f} s")
    probe = subprocess.run(
        [PY, "-X", "importtime", "-m", "resblock", "check", "--impl",
         str(ROOT / "examples" / "numpy_float32.py") + ":forward", "-q"],
        capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("jax", "flax"))
    lines.append("  check path of a NumPy implementation imports jax/flax: "
                 + ("NO" if not heavy else f"YES ({heavy[0]}; target: no)"))


def memory(tmp: Path, lines):
    def peak(cmd):
        code = ("import resource, subprocess, sys\n"
                f"subprocess.run({cmd!r}, check=True, stdout=subprocess.DEVNULL)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1]) / 1024

    big = peak([PY, "-m", "resblock", "generate", "--preset", "large", "-o",
                str(tmp / "mem-large.h5"), "--force", "--jobs", "1"])
    one = peak([PY, "-m", "resblock", "generate", "--family", "seeded", "--shapes", "56x56",
                "--features", "64", "--seeds", "0-3", "-o", str(tmp / "mem-one.h5"),
                "--force", "--jobs", "1"])
    lines.append(f"  peak RSS generating the large grid (49 cases, 13 groups): {big:.0f} MiB; "
                 f"its largest shape group alone: {one:.0f} MiB -> {big / one:.2f}x")


def gradients(preset: str, repeats: int, tmp: Path, lines: list[str]):
    """Generation with gradients (forward and VJP in one program per shape group, plus
    the oracle backward and its budgets) against forward-only generation and against a
    naive eager ``jax.vjp`` per case; cold, medians, side by side."""
    import numpy as np

    fwd_out, grad_out = tmp / f"{preset}-fwd.h5", tmp / f"{preset}-grad.h5"
    naive_out = tmp / f"{preset}-naive-vjp.npz"
    base = [PY, "-m", "resblock", "generate", "--preset", preset, "--force", "-o"]
    cmds = {"forward-only": base + [str(fwd_out), "--no-grad"],
            "with gradients": base + [str(grad_out), "--grad"],
            "naive jax.vjp loop": [PY, str(ROOT / "benchmarks" / "naive_vjp_loop.py"), preset,
                                   str(naive_out)]}
    times: dict = {k: [] for k in cmds}
    for _ in range(repeats):
        for k, c in cmds.items():
            times[k].append(run(c, env_with()))
    med = {k: statistics.median(v) for k, v in times.items()}
    g = med["with gradients"]
    lines.append(f"  {preset:8s} cold: forward-only {med['forward-only']:6.2f} s, with gradients "
                 f"{g:6.2f} s ({g / med['forward-only']:.2f}x the forward-only), naive "
                 f"jax.vjp loop {med['naive jax.vjp loop']:6.2f} s "
                 f"({med['naive jax.vjp loop'] / g:.2f}x slower than generate --grad; it "
                 f"computes no oracle, budgets or file)  (medians of {repeats})")
    floor = {m: [] for m in ("fwd", "grad")}
    for _ in range(repeats):  # the compilations alone, alternately (benchmarks/compile_floor.py)
        for m in floor:
            out = subprocess.run([PY, str(ROOT / "benchmarks" / "compile_floor.py"), preset, m],
                                 capture_output=True, text=True, check=True, env=env_with())
            wall, cpu, groups = out.stdout.split()
            floor[m].append((float(wall), float(cpu)))
    fw = {m: statistics.median(w for w, _ in v) for m, v in floor.items()}
    fc = {m: statistics.median(c for _, c in v) for m, v in floor.items()}
    lines.append(f"  {preset:8s} compile floor ({groups} shape groups, lowered and compiled, "
                 f"nothing run): forward+VJP {fw['grad']:.2f} s wall / {fc['grad']:.2f} s CPU, "
                 f"forward {fw['fwd']:.2f} s / {fc['fwd']:.2f} s -> {fc['grad'] / fc['fwd']:.2f}x "
                 f"the CPU (generate --grad on a compile-bound grid cannot cost less than "
                 f"that against forward-only)")
    lines.append(f"  {preset:8s} file size: forward-only {fwd_out.stat().st_size / 1e6:.2f} MB, "
                 f"with gradients {grad_out.stat().st_size / 1e6:.2f} MB")
    from resblock.golden.reader import GoldenFile

    naive = np.load(naive_out)
    with GoldenFile(grad_out) as gf:
        worst = max(float(np.max(np.abs(naive[c.id] - c.arrays["grad/x"])
                                 / np.maximum(c.arrays["budget/grad/x"], 1e-30)))
                    for c in gf.iter_cases())
    assert worst <= 1.0, worst
    lines.append(f"  {preset:8s} naive loop's x_bar vs the golden's: worst score {worst:.3g}")
    return med


def timed_peak(cmd, env=None) -> tuple[float, float]:
    """``(wall seconds, peak RSS in MB)`` of ``cmd`` run in a fresh wrapper process (its
    children's peak is its own measure: RUSAGE_CHILDREN is a maximum over all of them)."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            f"subprocess.run({list(map(str, cmd))!r}, check=True, stdout=subprocess.DEVNULL)\n"
            "print(time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, env=env)
    wall, peak = out.stdout.split()
    return float(wall), float(peak) * 1.048576  # MiB -> MB


def small_grid_floor(repeats: int, tmp: Path, lines: list[str], preset: str = "bench"):
    """Cold generation of a small grid (256 cases in 8 shape groups) against its compile
    floor, a fresh process that compiles and runs one jit(vmap(apply)) per shape group
    (benchmarks/floor_groups.py); alternately, medians."""
    floor = [PY, ROOT / "benchmarks" / "floor_groups.py", preset]
    gen = [PY, "-m", "resblock", "generate", "--preset", preset, "--force", "-o",
           tmp / f"{preset}-cold.h5"]
    tf, tg = [], []
    for _ in range(repeats):
        tf.append(run(list(map(str, floor)), env_with()))
        tg.append(run(list(map(str, gen)), env_with()))
    mf, mg = statistics.median(tf), statistics.median(tg)
    lines.append(f"  {preset} grid cold: resblock generate {mg:.2f} s, compile floor (one "
                 f"jit+vmap apply per shape group) {mf:.2f} s -> {mg / mf:.2f}x the floor  "
                 f"(medians of {repeats})")


REAL_CASE = (32, 56, 56, 64)  # ResNet-18's first stage at batch 32 (issue 19)


def real_sizes(repeats: int, tmp: Path, lines: list[str], grad: bool = True):
    """One real-size case (``REAL_CASE``) against its floor, side by side, alternately:
    a fresh process that imports JAX and Flax, compiles and runs the block's forward at
    that shape (benchmarks/floor_forward.py). Wall time, peak memory and bytes (the file
    against the float32 ``x`` and ``y`` it holds) as ratios; then ``--stages`` and
    ``--grad`` once, and the check of the file (a NumPy float32 implementation)."""
    n, h, w, f = REAL_CASE
    xy = 2 * n * h * w * f * 4
    env = env_with()
    floor = [PY, ROOT / "benchmarks" / "floor_forward.py", n, h, w, f]
    out = tmp / "real.h5"
    gen = [PY, "-m", "resblock", "generate", "--family", "functional", "--shapes", f"{h}x{w}",
           "--batch", n, "--features", f, "--seeds", "0", "--force", "-o"]
    fl, gn = [], []
    for _ in range(repeats):
        fl.append(timed_peak(floor, env))
        gn.append(timed_peak(gen + [out], env))
    (ft, fm), (gt, gm) = ([statistics.median(v) for v in zip(*xs, strict=True)]
                          for xs in (fl, gn))
    size = out.stat().st_size
    lines.append(f"  {n}x{h}x{w}x{f} floor (fresh process, JAX+Flax, compile and run the "
                 f"forward): {ft:.2f} s, {fm:.0f} MB peak")
    lines.append(f"  resblock generate (default: no stage data, deflate): {gt:.2f} s "
                 f"({gt / ft:.2f}x the floor), {gm:.0f} MB peak ({gm / fm:.2f}x), file "
                 f"{size / 1e6:.1f} MB = {size / xy:.2f}x its float32 x+y ({xy / 1e6:.1f} MB)"
                 f"  (medians of {repeats})")
    st, sm = timed_peak(gen + [tmp / "real-stages.h5", "--stages"], env)
    lines.append(f"  with --stages: {st:.2f} s ({st / ft:.2f}x), {sm:.0f} MB peak "
                 f"({sm / fm:.2f}x), file {(tmp / 'real-stages.h5').stat().st_size / 1e6:.1f} MB"
                 f" = {(tmp / 'real-stages.h5').stat().st_size / xy:.2f}x x+y")
    if grad:
        rt, rm = timed_peak(gen + [tmp / "real-grad.h5", "--grad"], env)
        gsize = (tmp / "real-grad.h5").stat().st_size
        lines.append(f"  with --grad: {rt:.2f} s ({rt / ft:.2f}x), {rm:.0f} MB peak "
                     f"({rm / fm:.2f}x), file {gsize / 1e6:.1f} MB = {gsize / xy:.2f}x x+y")
    check = [PY, "-m", "resblock", "check", "--impl",
             ROOT / "examples" / "numpy_float32.py", "-q", "--goldens"]
    check[5] = f"{check[5]}:forward"
    ct, cm = timed_peak(check + [out], env)
    kt, km = timed_peak(check + [tmp / "real-stages.h5"], env)
    lines.append(f"  check of that case (NumPy float32 impl): {ct:.2f} s, {cm:.0f} MB peak; "
                 f"of the --stages file {kt:.2f} s, {km:.0f} MB")


def timed_pair(cmds, env=None) -> tuple[float, list[tuple[float, float]]]:
    """Run ``cmds`` at the same time, each under :func:`timed_peak`: ``(wall seconds of
    the whole pair, [(wall, peak MB)] per command)``."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(len(cmds)) as pool:
        each = list(pool.map(lambda c: timed_peak(c, env), cmds))
    return time.perf_counter() - t, each


def scale_out(tmp: Path, lines: list[str], preset: str = "resnet18"):
    """A real-size preset (issue 19 item 4) one process (``--jobs 1``) against two
    processes on this machine: ``--shard 1/2`` and ``2/2`` at the same time then
    ``merge``, and ``--distributed`` with 2 processes (jax.distributed on localhost).
    Wall, peak memory per process, bytes; every file the same content hash."""
    import h5py

    env = env_with()
    gen = [PY, "-m", "resblock", "generate", "--preset", preset, "--force", "-o"]
    one = tmp / f"{preset}-1.h5"
    t1, m1 = timed_peak(gen + [one, "--jobs", "1"], env)
    shards = [tmp / f"{preset}-s{k}.h5" for k in (1, 2)]
    ts, each = timed_pair([gen + [p, "--shard", f"{k}/2", "--jobs", "1"]
                           for k, p in enumerate(shards, 1)], env)
    merged = tmp / f"{preset}-merged.h5"
    tm, mm = timed_peak([PY, "-m", "resblock", "merge", merged, *shards], env)
    dist = tmp / f"{preset}-dist.h5"
    import socket

    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    td, deach = timed_pair([gen + [dist, "--distributed", "--coordinator",
                                   f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(k)] for k in (0, 1)], env)

    def content(path):
        import json

        with h5py.File(path, "r") as f:
            return json.loads(f["metadata"][()])["content_sha256"]

    hashes = {content(p) for p in (one, merged, dist)}
    assert len(hashes) == 1, f"scale-out files differ in content: {hashes}"
    size = one.stat().st_size
    ssz = [p.stat().st_size for p in shards]
    lines.append(f"  {preset}, one process (--jobs 1): {t1:.1f} s, {m1:.0f} MB peak, "
                 f"{size / 1e6:.1f} MB")
    lines.append(f"  --shard 1/2 + 2/2 at once: {ts:.1f} s (each {each[0][0]:.1f} / "
                 f"{each[1][0]:.1f} s, {each[0][1]:.0f} / {each[1][1]:.0f} MB peak, "
                 f"{ssz[0] / 1e6:.1f} / {ssz[1] / 1e6:.1f} MB), then merge {tm:.1f} s, "
                 f"{mm:.0f} MB peak, {merged.stat().st_size / 1e6:.1f} MB: "
                 f"{(ts + tm) / t1:.2f}x the one process's time")
    lines.append(f"  --distributed, 2 processes: {td:.1f} s (each {deach[0][0]:.1f} / "
                 f"{deach[1][0]:.1f} s, {deach[0][1]:.0f} / {deach[1][1]:.0f} MB peak), "
                 f"{dist.stat().st_size / 1e6:.1f} MB: {td / t1:.2f}x the one process's "
                 "time; every file the same content hash")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="bench grid only, 1 repeat")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backward-only", action="store_true",
                    help="only section 5 (generation with gradients), bench and default")
    ap.add_argument("--check-only", action="store_true",
                    help="only section 3 (check overhead, worker and --in-process)")
    ap.add_argument("--real-only", action="store_true",
                    help="only section 6: a real-size case and a small grid against "
                         "their floors")
    ap.add_argument("--scale-only", action="store_true",
                    help="only section 7: the resnet18 preset by one process, by --shard "
                         "+ merge and by --distributed with 2 processes")
    args = ap.parse_args(argv)
    import flax
    import jax
    import numpy

    from resblock.generator.provenance import cpu_model

    lines = [f"resblock benchmarks, {time.strftime('%Y-%m-%d')}",
             f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
             f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__},"
             f" numpy {numpy.__version__}", ""]
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.check_only:
            lines.append("3. check overhead")
            check_overhead(repeats, lines)
            print("\n".join(lines))
            return 0
        if args.scale_only:
            lines.append("7. scale-out of a real-size preset (issue 19)")
            scale_out(tmp, lines)
            print("\n".join(lines))
            return 0
        if args.real_only:
            lines.append("6. a real-size case vs its floor (issue 19)")
            small_grid_floor(repeats, tmp, lines)
            real_sizes(repeats, tmp, lines, grad=not args.quick)
            print("\n".join(lines))
            if args.out:
                args.out.write_text("\n".join(lines) + "\n", "utf-8")
            return 0
        if args.backward_only:
            lines.append("5. generation with gradients vs forward-only vs a naive jax.vjp loop")
            for preset in ("bench", "default"):
                gradients(preset, repeats, tmp, lines)
            print("\n".join(lines))
            return 0
        lines.append("1. generation vs the naive loop (init + apply eagerly per case)")
        for preset in (("bench",) if args.quick else ("bench", "default", "large")):
            generation(preset, repeats if preset != "large" else 1, tmp, lines)
            print("\n".join(lines[-4:]), flush=True)
        lines.append("2. efficiency at large shapes; where generation time goes")
        efficiency(lines)
        for preset in (("bench",) if args.quick else ("bench", "large")):
            shares(preset, lines)
        lines.append("3. check overhead")
        check_overhead(repeats, lines)
        lines.append("4. memory")
        memory(tmp, lines)
        lines.append("5. generation with gradients vs forward-only vs a naive jax.vjp loop")
        for preset in (("bench",) if args.quick else ("bench", "default")):
            gradients(preset, repeats, tmp, lines)
        lines.append("6. a real-size case vs its floor (issue 19)")
        small_grid_floor(repeats, tmp, lines)
        real_sizes(repeats, tmp, lines, grad=not args.quick)
        if not args.quick:
            lines.append("7. scale-out of a real-size preset (issue 19)")
            scale_out(tmp, lines)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
