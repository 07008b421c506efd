"""Fast, bit-identical derivation of a whole shape group's inputs and parameters.

The spec defines every array as one ``jax.random`` call (``spec/derivation.py``,
``ExactDraws``). Calling it per array costs a dispatch per draw and a compilation per
distinct shape, which dominated generation time. Here the same draws are made in a few
batched calls, relying on two properties of JAX's partitionable threefry PRNG (JAX's
default since 0.5, recorded in metadata): a draw of shape S equals the first prod(S)
values of a longer 1-D draw with the same key, reshaped; and ``vmap`` over keys equals
the per-key calls. Both are asserted by tests/generator/test_batched.py against the
exact path; with ``jax_threefry_partitionable`` off the exact path is used instead.

Seeded-family parameters: Flax's ``jit(init)`` costs one ~0.6 s compilation per feature
count (``jit(vmap(init))`` 2-4x more); :func:`_init_all` reproduces Flax's init with one
batched truncated-normal program for all feature counts (see its docstring), for the
Flax versions in ``FAST_INIT_FLAX``; other versions fall back to Flax's init.
"""

from __future__ import annotations

import numpy as np

from resblock.spec.derivation import (
    _cpu,
    derive_random_variables,
    derive_x,
    key_seed,
    zero_batch_norms,
)

CHUNK = 64  # keys per batched call (fixed, so the key count never forces a recompile)


def _bucket(n: int) -> int:
    return max(256, 1 << (n - 1).bit_length())


class _Recorder:
    """First pass: record every draw a derivation asks for, return placeholders."""

    def __init__(self):
        self.requests: list[tuple] = []

    def normal(self, case, role, shape):
        size = int(np.prod(shape))
        self.requests.append(("normal", key_seed(case, role), size, 0.0, 0.0, shape))
        return np.zeros(shape, np.float32)

    def uniform(self, case, role, shape, lo, hi):
        size = int(np.prod(shape))
        self.requests.append(("uniform", key_seed(case, role), size, lo, hi, shape))
        return np.zeros(shape, np.float32)


class _Replay:
    """Second pass: hand out the batched results in the recorded order."""

    def __init__(self, values):
        self._it = iter(values)

    def normal(self, case, role, shape):
        return next(self._it)

    def uniform(self, case, role, shape, lo, hi):
        return next(self._it)


_FN_CACHE: dict = {}


def _draw_fn(sizes: tuple[int, int, int]):
    """One program for every draw kind: CHUNK normal, uniform and truncated-normal rows.

    Uniform bounds and the Flax fold-in constant are runtime arguments; each row is the
    same float32 arithmetic as the per-array call (tested bit for bit). One program per
    grid instead of one per kind: each XLA compilation costs ~0.1-0.5 s.
    """
    import jax

    fn = _FN_CACHE.get(sizes)
    if fn is None:
        sn, su, st = sizes

        def normal(seed):
            return jax.random.normal(jax.random.PRNGKey(seed), (sn,), np.float32)

        def uniform(seed, lo, hi):
            return jax.random.uniform(jax.random.PRNGKey(seed), (su,), np.float32, lo, hi)

        def truncated(seed, h):
            k = jax.random.fold_in(jax.random.PRNGKey(seed), h)
            return jax.random.truncated_normal(k, -2.0, 2.0, (st,), np.float32)

        def draw(ns, us, lo, hi, ts, th):
            # A kind the grid does not use (size 0) is left out: less to compile.
            return (jax.vmap(normal)(ns) if sn else None,
                    jax.vmap(uniform)(us, lo, hi) if su else None,
                    jax.vmap(truncated)(ts, th) if st else None)

        fn = jax.jit(draw)
        _FN_CACHE[sizes] = fn
    return fn


PAD_BUDGET_BYTES = 256 * 2**20  # output of one batched call, padding included


def _execute(normal_reqs, uniform_reqs, trunc_reqs):
    """Run all draws. Requests: (seed, size[, lo, hi] or [, h]); returns 1-D arrays.

    Every row of a batched call is padded to the largest draw of its kind: one program
    for the whole grid, which is what makes cold generation fast. When that padding
    would exceed :data:`PAD_BUDGET_BYTES` (one large shape among small ones: CHUNK rows
    of the largest draw), each size class runs on its own, with as few rows as fit:
    memory then follows the draws themselves.
    """
    reqs = (normal_reqs, uniform_reqs, trunc_reqs)
    sizes = tuple(_bucket(max(r[1] for r in rs)) if rs else 0 for rs in reqs)
    if CHUNK * sum(sizes) * 4 <= PAD_BUDGET_BYTES:
        return _execute_batch(reqs, sizes, CHUNK)
    outs: tuple[list, list, list] = tuple([None] * len(rs) for rs in reqs)
    for kind, rs in enumerate(reqs):
        classes: dict[int, list[int]] = {}
        for i, r in enumerate(rs):
            classes.setdefault(_bucket(r[1]), []).append(i)
        for bucket, idx in sorted(classes.items()):
            # No more rows than draws: one real-size x (6.4M values) in a call of 8
            # rows cost 1.1 GB and 5 s of threefry for 7 rows of padding.
            rows = max(1, min(CHUNK, len(idx), PAD_BUDGET_BYTES // (4 * bucket)))
            sub = tuple([rs[i] for i in idx] if k == kind else [] for k in range(3))
            res = _execute_batch(sub, tuple(bucket if k == kind else 0 for k in range(3)),
                                 rows)
            for i, v in zip(idx, res[kind], strict=True):
                outs[kind][i] = v
    return outs


def _execute_batch(reqs, sizes, rows: int):
    """The draws of ``reqs`` in calls of ``rows`` rows, each row ``sizes[kind]`` long."""
    import jax

    normal_reqs, uniform_reqs, trunc_reqs = reqs
    fn = _draw_fn(sizes)
    outs: tuple[list, list, list] = ([], [], [])
    n_chunks = max(-(-len(r) // rows) for r in reqs)

    def column(rs, start, idx, dtype, fill=0):
        vals = [r[idx] for r in rs[start : start + rows]]
        return np.asarray(vals + [fill] * (rows - len(vals)), dtype=dtype)

    with jax.default_device(_cpu()):
        for k in range(n_chunks):
            s0 = k * rows
            res = fn(column(normal_reqs, s0, 0, np.uint32),
                     column(uniform_reqs, s0, 0, np.uint32),
                     column(uniform_reqs, s0, 2, np.float32),
                     column(uniform_reqs, s0, 3, np.float32, 1),
                     column(trunc_reqs, s0, 0, np.uint32),
                     column(trunc_reqs, s0, 2, np.uint32))
            for out, rs, vals in zip(outs, reqs, res, strict=True):
                if vals is None:
                    continue
                vals = np.asarray(vals)
                for row, r in enumerate(rs[s0 : s0 + rows]):
                    out.append(vals[row, : r[1]].copy())  # not a view of the padded block
    return outs


# Flax versions whose init this module reproduces (tests/generator/test_batched.py
# asserts equality with Flax's own init); any other version uses Flax's init itself.
FAST_INIT_FLAX = ("0.12.",)
_KERNEL_SUFFIXES = {"Conv_0": ("Conv_0", 1), "Conv_1": ("Conv_1", 1)}


def _flax_suffix_hash(suffix) -> int:
    """The uint32 Flax folds into the init key for a module's first ``make_rng``.

    Mirrors ``flax.core.scope._fold_in_static``: SHA-1 over the suffix items (each
    preceded by a NUL byte when ``flax_fix_rng_separator`` is on), first 4 bytes,
    big-endian.
    """
    import hashlib

    from flax import config as flax_config

    m = hashlib.sha1()
    for x in suffix:
        if flax_config.flax_fix_rng_separator:
            m.update(b"\00")
        if isinstance(x, str):
            m.update(x.encode("utf-8"))
        else:
            m.update(x.to_bytes((x.bit_length() + 7) // 8, byteorder="big"))
    return int.from_bytes(m.digest()[:4], byteorder="big")


def fast_init_supported() -> bool:
    import flax

    return flax.__version__.startswith(FAST_INIT_FLAX)


def _init_requests(requests) -> list[tuple]:
    """Truncated-normal draws (seed, size, h) for the kernels of each (seed, features)."""
    return [(seed, 9 * f * f, np.uint32(_flax_suffix_hash(suffix)))
            for seed, f in requests for suffix in _KERNEL_SUFFIXES.values()]


def _assemble_init(requests, draws) -> dict:
    """Flax-init ``(params, batch_stats)`` per (seed, features) from its kernel draws.

    Kernels: lecun_normal = truncated normal on [-2, 2] times
    ``sqrt(1 / (9 C)) / 0.87962566103423978`` (float32), drawn with the key Flax derives
    for the module (``fold_in(PRNGKey(seed), hash(('Conv_i', 1)))``); biases, BN
    scale/bias and running stats are the constant inits. Bit-identical to
    ``BasicBlock(F).init`` (tested).
    """
    it = iter(draws)
    out = {}
    for seed, f in requests:
        std = np.sqrt(np.float32(1.0 / (9 * f))) / np.float32(0.87962566103423978)
        zeros, ones = np.zeros(f, np.float32), np.ones(f, np.float32)
        params = {}
        for layer, bn in (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1")):
            kernel = (next(it).reshape(3, 3, f, f) * std).astype(np.float32)
            params[layer] = {"kernel": kernel, "bias": zeros.copy()}
            params[bn] = {"scale": ones.copy(), "bias": zeros.copy()}
        stats = {bn: {"mean": zeros.copy(), "var": ones.copy()}
                 for bn in ("BatchNorm_0", "BatchNorm_1")}
        out[(seed, f)] = (params, stats)
    return out


def derive_cases(cases) -> list[tuple[np.ndarray, dict, dict]]:
    """``(x, params, batch_stats)`` for each case, equal bit for bit to the exact path.

    Pass many cases at once (several shape groups): the number of compilations depends
    on the distinct draw sizes, not on the number of cases.
    """
    return _derive(cases, y_bars=False)[0]


def derive_cases_and_y_bars(cases) -> tuple[list[tuple[np.ndarray, dict, dict]], list]:
    """:func:`derive_cases` and :func:`derive_y_bars` in the same batched calls: ``y_bar``
    has ``x``'s shape, so its draws join ``x``'s rows of the same program (derived
    apart, the cotangents cost a second draw program per chunk: 1.3 s of the default
    preset's ``generate --grad``)."""
    return _derive(cases, y_bars=True)


def _derive(cases, y_bars: bool):
    import jax

    from resblock.spec.derivation import derive_variables, derive_y_bar

    if not jax.config.jax_threefry_partitionable:
        return ([(derive_x(c), *derive_variables(c)) for c in cases],
                [derive_y_bar(c) for c in cases] if y_bars else None)
    rec = _Recorder()
    for c in cases:
        derive_x(c, rec)
        if c.params_source == "random":
            derive_random_variables(c, rec)
        if y_bars:
            derive_y_bar(c, rec)
    init_requests = sorted({(c.seed, c.features) for c in cases if c.params_source == "init"})
    fast = fast_init_supported()
    normal = [(r[1], r[2]) for r in rec.requests if r[0] == "normal"]
    uniform = [(r[1], r[2], r[3], r[4]) for r in rec.requests if r[0] == "uniform"]
    trunc = _init_requests(init_requests) if fast else []
    n_out, u_out, t_out = _execute(normal, uniform, trunc)
    n_it, u_it = iter(n_out), iter(u_out)
    replay = _Replay([(next(n_it) if r[0] == "normal" else next(u_it)).reshape(r[5])
                      for r in rec.requests])
    if fast:
        inits = _assemble_init(init_requests, t_out)
    else:
        from resblock.spec.reference import init_variables

        inits = {r: init_variables(*r) for r in init_requests}
    out, bars = [], []
    for c in cases:
        x = derive_x(c, replay)
        if c.params_source == "random":
            params, stats = derive_random_variables(c, replay)
        else:
            params, stats = inits[(c.seed, c.features)]
        out.append((x, zero_batch_norms(c, params), stats))
        if y_bars:
            bars.append(derive_y_bar(c, replay))
    return out, (bars if y_bars else None)


def derive_y_bars(cases) -> list[np.ndarray]:
    """The cotangent ``y_bar`` of each case (spec 10.1), equal bit for bit to
    :func:`resblock.spec.derivation.derive_y_bar`, in batched calls: the exact path
    compiles one ``jax.random.normal`` per shape (~1.2 s each, measured: 45 of 47 s of
    ``generate --grad`` on the default preset)."""
    import jax

    from resblock.spec.derivation import derive_y_bar

    if not jax.config.jax_threefry_partitionable:
        return [derive_y_bar(c) for c in cases]
    rec = _Recorder()
    for c in cases:
        derive_y_bar(c, rec)
    n_out, _, _ = _execute([(r[1], r[2]) for r in rec.requests], [], [])
    return [v.reshape(r[5]) for v, r in zip(n_out, rec.requests, strict=True)]


def derive_running_stats_all(cases) -> list[dict]:
    """The running statistics of each case's inference block (spec 12.2), equal bit for
    bit to :func:`resblock.spec.derivation.derive_running_stats`, in batched calls (the
    exact path makes four ``jax.random`` calls per case: 2.3 of the 6 CPU seconds the
    inference block adds to generating the default preset)."""
    import jax

    from resblock.spec.derivation import derive_running_stats

    if not jax.config.jax_threefry_partitionable:
        return [derive_running_stats(c) for c in cases]
    rec = _Recorder()
    for c in cases:
        derive_running_stats(c, rec)
    normal = [(r[1], r[2]) for r in rec.requests if r[0] == "normal"]
    uniform = [(r[1], r[2], r[3], r[4]) for r in rec.requests if r[0] == "uniform"]
    n_out, u_out, _ = _execute(normal, uniform, [])
    n_it, u_it = iter(n_out), iter(u_out)
    replay = _Replay([(next(n_it) if r[0] == "normal" else next(u_it)).reshape(r[5])
                      for r in rec.requests])
    return [derive_running_stats(c, replay) for c in cases]
