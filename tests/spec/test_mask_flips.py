"""Tests of spec/mask_flips.py: the ReLU masks a correct port may flip, the exact image of
each flip on the gradients, the fit that finds a port's flips, and the backward rule with
the masks resolved (DESIGN section 6)."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.spec import backward as bwd
from resblock.spec import mask_flips
from resblock.spec.error_model_backward import GRAD_TENSORS

F32 = np.float32
J_SUM = (1, 2, 3, 1)   # the planted output-ReLU element
J_BN1 = (0, 4, 1, 2)   # the planted relu1 element


def _case(seed=0, n=2, h=6, w=6, f=4):
    """A random case with one pre-activation of each ReLU planted 1e-12 from 0, where a
    correct float32 port may see either sign."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, h, w, f)).astype(F32)
    params = {}
    for i in range(2):
        params[f"Conv_{i}"] = {
            "kernel": (r.standard_normal((3, 3, f, f)) / np.sqrt(9 * f)).astype(F32),
            "bias": r.uniform(-1, 1, f).astype(F32)}
        params[f"BatchNorm_{i}"] = {"scale": r.uniform(0.5, 2.0, f).astype(F32),
                                    "bias": np.zeros(f, F32)}
    stats = {f"BatchNorm_{i}": {"mean": np.zeros(f, F32), "var": np.ones(f, F32)}
             for i in range(2)}
    y_bar = r.standard_normal((n, h, w, f)).astype(F32)
    # relu1: bias = -bn1 value at J_BN1 (rounded to float32): that element sits at ~0
    st = bwd.backward(x, params, stats, y_bar).forward.stages
    c = J_BN1[-1]
    params["BatchNorm_0"]["bias"][c] = -F32(st["bn1"][J_BN1])
    st = bwd.backward(x, params, stats, y_bar).forward.stages
    # the output ReLU: BatchNorm_1's bias moves bn2 + x to ~0 at J_SUM (relu1 unchanged)
    params["BatchNorm_1"]["bias"][J_SUM[-1]] = -F32(st["sum"][J_SUM])
    return x, params, stats, y_bar


def _backward_with(x, params, stats, y_bar, flip_sum=(), flip_bn1=()):
    """The float64 backward with the listed masks flipped (the oracle's formulas)."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    res = bwd.backward(x, params, stats, y_bar)
    st = res.forward.stages
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    sum_bar = bwd.relu_backward(st["sum"], f64(y_bar))
    for j in flip_sum:
        sum_bar[j] = y_bar[j] if sum_bar[j] == 0 else 0.0
    c2b, s1, b1 = bwd.batch_norm_backward(st["conv2"], p["BatchNorm_1"]["scale"], sum_bar)
    r_bar = bwd.conv3x3_input_grad(c2b, p["Conv_1"]["kernel"])
    bn1_bar = bwd.relu_backward(st["bn1"], r_bar)
    for j in flip_bn1:
        bn1_bar[j] = r_bar[j] if bn1_bar[j] == 0 else 0.0
    c1b, s0, b0 = bwd.batch_norm_backward(st["conv1"], p["BatchNorm_0"]["scale"], bn1_bar)
    ax = (0, 1, 2)
    return {"x": sum_bar + bwd.conv3x3_input_grad(c1b, p["Conv_0"]["kernel"]),
            "Conv_0/kernel": bwd.conv3x3_kernel_grad(f64(x), c1b), "Conv_0/bias": c1b.sum(ax),
            "BatchNorm_0/scale": s0, "BatchNorm_0/bias": b0,
            "Conv_1/kernel": bwd.conv3x3_kernel_grad(st["relu1"], c2b),
            "Conv_1/bias": c2b.sum(ax), "BatchNorm_1/scale": s1, "BatchNorm_1/bias": b1}


@pytest.fixture(scope="module")
def case():
    x, params, stats, y_bar = _case()
    return x, params, stats, y_bar, bwd.backward(x, params, stats, y_bar)


def test_the_planted_masks_are_the_ambiguous_ones(case):
    x, params, stats, y_bar, bw = case
    masks = mask_flips.ambiguous(x, params, stats, bw)
    assert {(s, j) for s, j, _ in masks} == {("sum", J_SUM), ("bn1", J_BN1)}
    assert all(d < 1.0 for _, _, d in masks)


def test_a_scale_of_zero_makes_a_sign_exact(case):
    x, params, stats, y_bar, _ = case
    p = {k: {kk: vv.copy() for kk, vv in v.items()} for k, v in params.items()}
    p["BatchNorm_0"]["scale"][J_BN1[-1]] = 0.0  # relu1 sees BatchNorm_0.bias exactly
    bw = bwd.backward(x, p, stats, y_bar)
    assert ("bn1", J_BN1) not in {(s, j) for s, j, _ in mask_flips.ambiguous(x, p, stats, bw)}


def test_each_direction_is_the_exact_change_of_a_flip(case):
    x, params, stats, y_bar, bw = case
    flips = mask_flips.directions(x, params, y_bar, bw, mask_flips.ambiguous(
        x, params, stats, bw))
    base = _backward_with(x, params, stats, y_bar)
    both = _backward_with(x, params, stats, y_bar, flip_sum=[J_SUM], flip_bn1=[J_BN1])
    together = mask_flips.change(x, params, y_bar, bw, [("sum", J_SUM), ("bn1", J_BN1)])
    for t in GRAD_TENSORS:
        np.testing.assert_allclose(base[t] + together[t], both[t], rtol=1e-10,
                                   atol=1e-12 * (np.max(np.abs(both[t])) + 1.0))
    # the output flip changes the cotangent the relu1 flip switches: they do not add
    one_by_one = base["Conv_0/kernel"] + sum(f.direction["Conv_0/kernel"] for f in flips)
    assert not np.allclose(one_by_one, both["Conv_0/kernel"], rtol=1e-6)
    for f in flips:
        kw = {"flip_sum": [f.index]} if f.stage == "sum" else {"flip_bn1": [f.index]}
        single = _backward_with(x, params, stats, y_bar, **kw)
        for t in GRAD_TENSORS:
            np.testing.assert_allclose(base[t] + f.direction[t], single[t], rtol=1e-10,
                                       atol=1e-12 * (np.max(np.abs(single[t])) + 1.0))
        # a flip is not a rounding error: it moves the first layer by far more
        assert np.max(np.abs(f.direction["BatchNorm_0/bias"])) > 1e-3


def test_fit_finds_the_flips_in_a_noisy_residual():
    r = np.random.default_rng(1)
    dirs = [{"a": r.standard_normal(200), "b": r.standard_normal(7)} for _ in range(5)]
    flips = [mask_flips.Flip("sum", (i,), 0.5, d) for i, d in enumerate(dirs)]
    truth = np.array([1, 0, 1, 1, 0], float)
    residual = {t: sum(b * d[t] for b, d in zip(truth, dirs, strict=True))
                + 0.05 * r.standard_normal(dirs[0][t].shape) for t in ("a", "b")}
    sigma = {"a": np.ones(200), "b": np.ones(7)}
    np.testing.assert_array_equal(mask_flips.fit(residual, flips, sigma), truth)
    assert mask_flips.fit(residual, [], sigma).size == 0


@pytest.mark.parametrize("flip", ["none", "sum", "bn1", "both"])
def test_a_correct_port_conforms_with_whatever_masks_it_saw(case, flip):
    x, params, stats, y_bar, bw = case
    kw = {"flip_sum": [J_SUM] if flip in ("sum", "both") else [],
          "flip_bn1": [J_BN1] if flip in ("bn1", "both") else []}
    grads = {t: v.astype(F32) for t, v in _backward_with(x, params, stats, y_bar, **kw).items()}
    res = mask_flips.resolve(x, params, stats, y_bar, grads, bw=bw)
    assert res.conforms, (res.element, res.aggregate, res.worst_tensor)
    want = {("sum", J_SUM)} if flip == "sum" else {("bn1", J_BN1)} if flip == "bn1" else \
        {("sum", J_SUM), ("bn1", J_BN1)} if flip == "both" else set()
    assert set(res.chosen) == want


def test_half_a_flip_is_not_a_flip(case):
    """A residual along a flip's direction that no set of flips explains stays."""
    x, params, stats, y_bar, bw = case
    base = _backward_with(x, params, stats, y_bar)
    flips = mask_flips.directions(x, params, y_bar, bw, mask_flips.ambiguous(
        x, params, stats, bw))
    grads = {t: (base[t] + 0.5 * flips[0].direction[t]).astype(F32) for t in GRAD_TENSORS}
    res = mask_flips.resolve(x, params, stats, y_bar, grads, bw=bw)
    assert not res.conforms and res.element > 100


def test_too_many_ambiguous_masks_are_refused(case, monkeypatch):
    x, params, stats, y_bar, bw = case
    monkeypatch.setattr(mask_flips, "MAX_FLIPS", 1)
    grads = {t: v.astype(F32) for t, v in _backward_with(x, params, stats, y_bar).items()}
    with pytest.raises(mask_flips.TooManyFlips, match="2 ReLU masks"):
        mask_flips.resolve(x, params, stats, y_bar, grads, bw=bw)


def test_resolve_computes_the_forward_spread_once_and_judges_as_before(case, monkeypatch):
    """A flipped mask changes only the backward, so every model of ``resolve`` shares one
    forward spread; the verdict is bit-identical to one where each model computes its
    own."""
    from resblock.spec import error_model_backward as emb
    from resblock.spec import error_spread

    x, params, stats, y_bar, bw = case
    grads = {t: v.astype(F32) for t, v in
             _backward_with(x, params, stats, y_bar, flip_sum=[J_SUM], flip_bn1=[J_BN1]).items()}
    calls = []
    real = error_spread.forward_spread
    monkeypatch.setattr(error_spread, "forward_spread",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = mask_flips.resolve(x, params, stats, y_bar, grads, bw=bw)
    assert len(calls) == 1
    monkeypatch.undo()
    raw = emb.raw_errors  # each model computes its own spread, as before the sharing
    monkeypatch.setattr(emb, "raw_errors", lambda *a, spread=None, **k: raw(*a, **k))
    own = mask_flips.resolve(x, params, stats, y_bar, grads, bw=bw)
    assert shared.chosen == own.chosen and set(shared.chosen) == {("sum", J_SUM),
                                                                  ("bn1", J_BN1)}
    assert (shared.element, shared.aggregate) == (own.element, own.aggregate)
    for t in GRAD_TENSORS:
        assert np.array_equal(shared.bounds[t], own.bounds[t]), t
