"""Tests of spec/source_images.py: the forward-mode images of the channel sources are the
derivatives of the float64 forward and VJP along each source (checked by central
differences of an independent, perturbable implementation), and the backward model that
uses them still admits correct float32 ports while its channel terms shrink."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.spec import backward as bwd
from resblock.spec import source_images
from resblock.spec.constants import EPSILON
from resblock.spec.oracle import conv3x3

F32 = np.float32


def _case(seed=0, n=2, h=5, w=5, f=3):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, h, w, f)).astype(F32)
    params = {}
    for i in range(2):
        params[f"Conv_{i}"] = {
            "kernel": (r.standard_normal((3, 3, f, f)) / np.sqrt(9 * f)).astype(F32),
            "bias": r.uniform(-1, 1, f).astype(F32)}
        params[f"BatchNorm_{i}"] = {"scale": r.uniform(0.5, 2.0, f).astype(F32),
                                    "bias": r.uniform(-0.5, 0.5, f).astype(F32)}
    stats = {f"BatchNorm_{i}": {"mean": np.zeros(f, F32), "var": np.ones(f, F32)}
             for i in range(2)}
    return x, params, stats, r.standard_normal((n, h, w, f)).astype(F32)


def _perturbed(x, params, y_bar, masks, hook):
    """The float64 forward and VJP with ``hook[(kind, layer)]`` (a per-channel vector)
    added where spec/source_images.py puts each source; masks fixed."""
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    p = {k: {kk: f64(vv) for kk, vv in v.items()} for k, v in params.items()}
    x = f64(x)
    h = lambda kind, lay: hook.get((kind, lay), 0.0)  # noqa: E731
    ax = (0, 1, 2)

    def bn(c, lay):
        mean = c.mean(axis=ax) + h("dm", lay)
        var = np.square(c - c.mean(axis=ax)).mean(axis=ax)
        inv = (1.0 + h("dr", lay)) / np.sqrt(var + EPSILON)
        z = (c - mean) * inv
        return z, inv, p[f"BatchNorm_{lay}"]["scale"] * z + p[f"BatchNorm_{lay}"]["bias"] \
            + h("da", lay)

    def bn_vjp(z, inv, g, lay):
        gi = p[f"BatchNorm_{lay}"]["scale"] * inv
        cb = gi * (g - (g.mean(axis=ax) + h("dg", lay))
                   - z * ((g * z).mean(axis=ax) + h("dgz", lay)))
        return cb, (g * z).sum(axis=ax), g.sum(axis=ax)

    c1 = conv3x3(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    z0, inv0, b1 = bn(c1, 0)
    r1 = b1 * masks["bn1"]
    c2 = conv3x3(r1, p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
    z1, inv1, _ = bn(c2, 1)
    g = f64(y_bar) * masks["sum"]
    c2b, s1, bb1 = bn_vjp(z1, inv1, g, 1)
    gb1 = bwd.conv3x3_input_grad(c2b, p["Conv_1"]["kernel"]) * masks["bn1"]
    c1b, s0, bb0 = bn_vjp(z0, inv0, gb1, 0)
    return {"x": g + bwd.conv3x3_input_grad(c1b, p["Conv_0"]["kernel"]),
            "Conv_0/kernel": bwd.conv3x3_kernel_grad(x, c1b), "Conv_0/bias": c1b.sum(axis=ax),
            "BatchNorm_0/scale": s0, "BatchNorm_0/bias": bb0,
            "Conv_1/kernel": bwd.conv3x3_kernel_grad(r1, c2b), "Conv_1/bias": c2b.sum(axis=ax),
            "BatchNorm_1/scale": s1, "BatchNorm_1/bias": bb1}


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("kind", source_images.KINDS)
def test_images_are_the_derivatives_along_each_source(kind, layer):
    x, params, stats, y_bar = _case()
    bw = bwd.backward(x, params, stats, y_bar)
    st = bw.forward.stages
    masks = {"bn1": (st["bn1"] > 0).astype(float), "sum": (st["sum"] > 0).astype(float)}
    im = source_images.images(x, params, st, bw.cotangents, [(kind, layer)])
    base = _perturbed(x, params, y_bar, masks, {})
    for t, v in base.items():  # the hook-free implementation is the oracle's backward
        want = bw.x_bar if t == "x" else bw.params_bar[t.split("/")[0]][t.split("/")[1]]
        np.testing.assert_allclose(v, want, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    nf = x.shape[-1]
    moved = False
    for f in range(nf):
        e = np.zeros(nf)
        e[f] = eps
        up = _perturbed(x, params, y_bar, masks, {(kind, layer): e})
        down = _perturbed(x, params, y_bar, masks, {(kind, layer): -e})
        for t in base:
            fd = (up[t] - down[t]) / (2 * eps)
            scale = max(float(np.max(np.abs(fd))), 1e-2)  # FD noise: ~1e-9
            np.testing.assert_allclose(im[t][f], fd, rtol=0, atol=1e-6 * scale, err_msg=t)
            moved = moved or np.max(np.abs(fd)) > 1e-3
    # every source moves some gradient, but BatchNorm_1's output rounding: with the masks
    # held, nothing in the backward reads bn2
    assert moved == ((kind, layer) != ("da", 1))


def test_sources_asked_together_give_the_same_images():
    x, params, stats, y_bar = _case(seed=3)
    bw = bwd.backward(x, params, stats, y_bar)
    st, cot = bw.forward.stages, bw.cotangents
    srcs = [("dm", 1), ("dr", 1), ("dg", 1), ("dgz", 1), ("dm", 0)]
    together = source_images.images(x, params, st, cot, srcs)
    nf = x.shape[-1]
    for b, src in enumerate(srcs):
        alone = source_images.images(x, params, st, cot, [src])
        for t, v in alone.items():
            # float32 convolutions of tangents, summed in another order when a source
            # alone takes the channel-sparse path: equal to float32 rounding
            np.testing.assert_allclose(together[t][b * nf:(b + 1) * nf], v, rtol=1e-5,
                                       atol=1e-6 * (np.max(np.abs(v)) + 1e-3))


def test_one_value_per_channel_has_no_source_images():
    x, params, stats, y_bar = _case(n=1, h=1, w=1)
    bw = bwd.backward(x, params, stats, y_bar)
    ones = np.ones(x.shape[-1])
    out = source_images.source_k(x, params, bw.forward.stages, bw.cotangents,
                                 {("dm", 0): (ones, ones)})
    assert all(np.all(np.asarray(k) == 0) for k, _ in out.values())


def test_cost_limit_covers_the_sizes_measured():
    for shape in ((16, 32, 32, 8), (16, 64, 64, 4), (8, 16, 16, 16), (4, 16, 16, 32)):
        assert source_images.exact(shape)
    for shape in ((32, 56, 56, 64), (1, 6, 6, 64), (2, 8, 8, 256)):
        assert not source_images.exact(shape)
