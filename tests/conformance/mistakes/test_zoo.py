"""Meta-tests of the error model with conformance/mistakes/zoo.py: correct float32 algorithms
computed differently from the reference must conform; the cheap slice of the grids that
scripts/zoo_grids.py runs in full.

* every zoo row (and each of its parts) is a correct block: it agrees with the float64
  oracle to float32 accuracy on a plain case;
* every "conforms" row conforms on the committed set through ``resblock check``'s own
  runner, and on generated stress cases (one value per channel at batch 1 and 2 for
  every input kind, wide convolutions);
* sequential float32 statistics stay inside the model on short reductions and leave it
  on a long one (2^20 values per channel), where the checker names
  ``sequential_f32_stats``.
"""

import numpy as np
import pytest

from resblock.conformance.judging.runner import CheckConfig, run_check
from resblock.conformance.mistakes import zoo
from resblock.conformance.running.invoke import InProcess
from resblock.golden.cli import default_goldens
from resblock.spec import oracle, tolerance
from resblock.spec.constants import STAT_NAMES

CORRECT = [a.name for a in zoo.ZOO if a.expect != "envelope"]


def _flat(stats):
    return {n: stats[n.split("/")[0]][n.split("/")[1]] for n in STAT_NAMES}


def test_zoo_table_is_well_formed():
    assert len(zoo.ZOO) >= 12
    assert {a.conv for a in zoo.ZOO} == set(zoo.CONVS)
    assert {a.stats for a in zoo.ZOO} == set(zoo.STATS)
    assert {a.norm for a in zoo.ZOO} == set(zoo.NORMS)
    assert [a.name for a in zoo.ZOO if a.expect == "measured"] == ["winograd6-pairwise"]
    with pytest.raises(ValueError, match="conv 'gemm' not in"):
        zoo.Algorithm("x", "gemm", "pairwise", "folded", "")


@pytest.mark.parametrize("m", [2, 4, 6])
def test_winograd_matrices_compute_the_correlation_exactly(m):
    """A^T [(G g) * (B^T d)] == correlation of d with g, for integer data (exact)."""
    at, g, bt = (a.astype(np.float64) for a in zoo.winograd_matrices(m))
    rng = np.random.default_rng(m)
    d = rng.integers(-4, 5, m + 2).astype(np.float64)
    k = rng.integers(-4, 5, 3).astype(np.float64)
    want = np.array([d[i:i + 3] @ k for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), want, atol=1e-4)


@pytest.mark.parametrize("conv", sorted(zoo.CONVS))
def test_each_convolution_is_the_spec_convolution(conv, make_case):
    x, params, _ = make_case(3, 2, 7, 5, 3)
    k, b = params["Conv_0"]["kernel"], params["Conv_0"]["bias"]
    want = oracle.conv3x3(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64))
    got = zoo.CONVS[conv](x, k, b)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 if conv == "winograd6" else 2e-5)


@pytest.mark.parametrize("stats", sorted(zoo.STATS))
@pytest.mark.parametrize("n", [1, 2, 7, 300, 1025])
def test_each_statistics_method_gives_mean_and_biased_variance(stats, n):
    rng = np.random.default_rng(n)
    rows = (rng.standard_normal((3, n)) * 2 + 5).astype(np.float32)
    mean, var = zoo.STATS[stats](rows)
    r = rows.astype(np.float64)
    np.testing.assert_allclose(mean, r.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(var, r.var(axis=1), rtol=2e-3, atol=1e-5)
    if n == 1:
        assert np.all(var == 0)  # one value per channel: exactly 0 whatever the formula


@pytest.fixture(scope="module")
def committed():
    return default_goldens()


@pytest.mark.parametrize("name", CORRECT)
def test_zoo_algorithm_conforms_on_the_committed_set(name, committed):
    cfg = CheckConfig(target=f"zoo:{name}")
    run = run_check(cfg, InProcess(zoo.make_forward(name), "functional", "nhwc"), committed)
    assert run.conforms, [(r.id, r.message) for r in run.results if r.status != "pass"][:3]
    # with margin: a correct algorithm near the bound means the model is too tight.
    # Winograd F(6x6,3x3) ("measured") shares its transform's roundings over a 6x6 tile,
    # so its errors are not independent within the tile, as the spread assumes: its
    # batch means reach 0.5 of the aggregate limit on the committed set (spec 8.5).
    limit = 0.6 if zoo.ZOO_BY_NAME[name].expect == "measured" else 0.25
    assert max(r.worst_score for r in run.results) < limit


@pytest.fixture(scope="module")
def stress_cases():
    """Generated in memory: one value per channel at batch 1 and 2 (every input kind),
    and 256 channels (9C = 2304 products per output)."""
    from resblock.spec.cases import Case

    cases = [Case(fam, inp, n, 1, 1, f, 0) for fam in ("functional", "stress")
             for inp in ("normal", "lowamp", "large", "offset") for n in (1, 2) for f in (8, 32)]
    cases += [Case("stress", inp, 2, 3, 3, 256, 0) for inp in ("normal", "offset")]
    return _generated(cases)


def _generated(cases):
    """Golden cases computed in memory, one group each, as ``generate`` computes them
    (the case's extras, e.g. ``ref_score``, in its entry)."""
    from resblock.generator.batched import derive_cases
    from resblock.generator.engine import ReferenceRunner, compute_group
    from resblock.golden.store import GoldenCase

    runner = ReferenceRunner()
    out = []
    for c, inputs in zip(cases, derive_cases(cases), strict=True):
        arrays, extras = compute_group([c], runner, [inputs])
        out.append(GoldenCase(c, dict(extras[0]), {k: v[0] for k, v in arrays.items()}))
    return out


def test_flax_and_the_zoo_conform_on_generated_stress_cases(stress_cases):
    fp32 = tolerance.profile("fp32")
    worst = {}
    for gc in stress_cases:
        flax = tolerance.worst_score(gc, gc.arrays["y"], {
            n: gc.arrays[f"batch_stats_out/{n}"] for n in STAT_NAMES}, fp32)
        worst["flax"] = max(worst.get("flax", 0.0), flax)
        for name in CORRECT:
            y, st = zoo.make_forward(name)(gc.x, gc.params, gc.batch_stats_in)
            s = tolerance.worst_score(gc, y, _flat(st), fp32)
            worst[name] = max(worst.get(name, 0.0), s)
    assert worst["flax"] <= 0.25, worst  # the spec's 4x margin for the reference
    assert max(worst.values()) < 0.5, worst


@pytest.mark.parametrize("name", ["fft-pairwise-folded", "winograd4-two_pass-folded"])
def test_fast_convolutions_conform_where_an_output_has_one_nonzero_product(name):
    """seeded-zeroinit-n1-1x1-f4-s4 (x = max(N(0,1), 0), Flax init): BatchNorm_0's
    running mean carries the single conv output's rounding, which in a transform-domain
    convolution carries every tap. Spec 6 rejected both (1.35 and 2.51); the transform
    term of spec 7 (SPEC 8.3) admits them, in both tests, without moving the direct sum."""
    from resblock.spec.cases import Case

    gc, = _generated([Case("seeded", "zeroinit", 1, 1, 1, 4, 4)])
    fp32 = tolerance.profile("fp32")
    y, st = zoo.make_forward("direct-pairwise")(gc.x, gc.params, gc.batch_stats_in)
    assert tolerance.worst_score(gc, y, _flat(st), fp32, aggregate=True) < 0.1
    y, st = zoo.make_forward(name)(gc.x, gc.params, gc.batch_stats_in)
    assert tolerance.worst_score(gc, y, _flat(st), fp32) < 0.5
    assert tolerance.worst_score(gc, y, _flat(st), fp32, aggregate=True) < 0.5


def test_sequential_statistics_conform_on_short_reductions(stress_cases):
    fp32 = tolerance.profile("fp32")
    for gc in stress_cases:
        for name in ("direct-sequential", "direct-welford_sequential"):
            y, st = zoo.make_forward(name)(gc.x, gc.params, gc.batch_stats_in)
            assert tolerance.worst_score(gc, y, _flat(st), fp32) <= 1.0, (name, gc.id)


def test_sequential_statistics_leave_the_envelope_on_a_long_reduction_and_are_named():
    """2^20 values per channel with a large per-channel mean: a float32 running sum
    stagnates; the pairwise-summing zoo rows and Flax stay far inside."""
    from resblock.conformance.mistakes.diagnose import best_match, match_scores, twin_outputs
    from resblock.spec.cases import Case

    gc, = _generated([Case("functional", "offset", 16, 256, 256, 2, 0)])
    fp32 = tolerance.profile("fp32")
    assert gc.entry["ref_score"] < 0.25
    good_y, good = zoo.make_forward("direct-pairwise")(gc.x, gc.params, gc.batch_stats_in)
    assert tolerance.worst_score(gc, good_y, _flat(good), fp32) < 0.25
    y, st = zoo.make_forward("direct-sequential")(gc.x, gc.params, gc.batch_stats_in)
    score = tolerance.worst_score(gc, y, _flat(st), fp32)
    assert score > 10
    twins = twin_outputs(gc)
    assert "sequential_f32_stats" in twins  # 2^20 >= its min_values
    assert best_match(score, match_scores(gc, y, _flat(st), fp32, twins)) == \
        "sequential_f32_stats"


@pytest.mark.parametrize("conv, profile", [("fft", "fp32"), ("winograd2", "fp32"),
                                           ("winograd4", "tf32-conv")])
def test_fast_convolutions_in_the_backward(conv, profile, committed):
    """Backward ports whose forward convolutions and input gradients are the zoo's FFT and
    Winograd convolutions (kernel gradients direct): FFT and F(2x2,3x3) conform under
    fp32. F(4x4,3x3)'s transposed convolution errs 10 to 35 times a direct sum's
    root-mean-square, outside the backward's fp32 model (SPEC 10.4, DESIGN 6); the
    tf32-conv profile admits it."""
    import fast_backward  # this directory is on sys.path (pytest's prepend mode)

    port = getattr(fast_backward, f"backward_{conv}")
    cfg = CheckConfig(target=f"fast_backward:{conv}", api="backward", profile=profile)
    run = run_check(cfg, InProcess(port, "backward", "nhwc"), committed)
    assert run.conforms, [(r.id, r.message) for r in run.results if r.status != "pass"][:3]
    assert max(r.worst_score for r in run.results) < 0.6  # measured: FFT 0.41, F(2x2) 0.20


@pytest.mark.xfail(strict=True, reason=(
    "a known false rejection (SPEC 10.4, DESIGN 6): at 1x1 and 1x2 images a kernel tap "
    "that sees only padding has an exact gradient of 0 and a floor budget, and an FFT "
    "correlation leaves rounding noise there; the fix is a transform term in the kernel "
    "gradient's rounding, a spec change"))
def test_fft_kernel_gradients_conform_on_the_committed_set(committed):
    import fast_backward  # this directory is on sys.path (pytest's prepend mode)

    cfg = CheckConfig(target="fast_backward:fft_kernel_grad", api="backward")
    run = run_check(cfg, InProcess(fast_backward.backward_fft_kernel_grad, "backward",
                                   "nhwc"), committed)
    failed = [r.id for r in run.results if r.status != "pass"]
    assert all("-1x1-" in i or "-1x2-" in i for i in failed), failed  # only the tiny ones
    assert run.conforms, failed
