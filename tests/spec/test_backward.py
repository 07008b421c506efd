"""Tests of spec/backward.py (the float64 oracle VJP) and spec/error_model_backward.py.

The oracle is checked against ``jax.vjp`` of the Flax reference and against finite
differences in float64; the budgets admit the float32 backward of JAX and of the NumPy
example and reject each backward mistake by a wide margin; the ReLU convention at exactly
0 is checked on a case that sees it (two identical samples, BatchNorm biases 0).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from resblock.spec import backward
from resblock.spec import error_model_backward as emb
from resblock.spec.error_model import bound_from

ROOT = Path(__file__).resolve().parents[2]


def _numpy_example():
    spec = importlib.util.spec_from_file_location("_nb", ROOT / "examples/numpy_backward.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flat(x_bar, params_bar):
    out = {"x": np.asarray(x_bar, np.float64)}
    for name in emb.GRAD_TENSORS[1:]:
        layer, leaf = name.split("/")
        out[name] = np.asarray(params_bar[layer][leaf], np.float64)
    return out


def _worst(case, got):
    x, p, s, yb = case
    bw = backward.backward(x, p, s, yb)
    b = emb.budgets(x, p, s, yb, bw)
    ref = _flat(bw.x_bar, bw.params_bar)
    return max(float(np.max(np.abs(got[n] - ref[n]) / bound_from(b.fp32[n], b.conv[n], 0.0)))
               for n in ref)


def _jax_vjp(x, p, s, yb):
    import jax
    import jax.numpy as jnp

    from resblock.spec.reference import apply_block, full_precision

    with full_precision():
        (_, new), vjp = jax.vjp(lambda x, p: apply_block(x, p, s), x, p)
        xb, pb = vjp((jnp.asarray(yb), jax.tree_util.tree_map(jnp.zeros_like, new)))
    return np.asarray(xb), jax.tree_util.tree_map(np.asarray, pb)


@pytest.fixture(scope="module")
def cases(make_case):
    out = []
    for i, (n, h, w, f) in enumerate([(2, 4, 4, 4), (4, 1, 1, 4), (1, 1, 1, 3), (1, 5, 3, 2)]):
        x, p, s = make_case(i, n, h, w, f)
        yb = np.random.default_rng(i).standard_normal(x.shape).astype(np.float32)
        out.append((x, p, s, yb))
    return out


def twin_case():
    """Two identical 1x1 samples, BatchNorm biases 0: relu1 sees exactly 0 while
    BatchNorm's Jacobian is not zero, so the ReLU convention at 0 shows in x_bar."""
    rng = np.random.default_rng(7)
    f = 3
    x = np.repeat(rng.standard_normal((1, 1, 1, f)).astype(np.float32), 2, axis=0)
    p = {c: {"kernel": (rng.standard_normal((3, 3, f, f)) / 5).astype(np.float32),
             "bias": np.zeros(f, np.float32)} for c in ("Conv_0", "Conv_1")}
    p.update({b: {"scale": np.ones(f, np.float32), "bias": np.zeros(f, np.float32)}
              for b in ("BatchNorm_0", "BatchNorm_1")})
    s = {b: {"mean": np.zeros(f, np.float32), "var": np.ones(f, np.float32)}
         for b in ("BatchNorm_0", "BatchNorm_1")}
    yb = rng.standard_normal(x.shape).astype(np.float32)
    return x, p, s, yb


def test_oracle_matches_jax_vjp(cases):
    for x, p, s, yb in cases:
        bw = backward.backward(x, p, s, yb)
        ref = _flat(bw.x_bar, bw.params_bar)
        got = _flat(*_jax_vjp(x, p, s, yb))
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], atol=2e-5 * (1 + np.abs(
                ref[name]).max()), err_msg=name)
    # the twin case amplifies rounding by 1/sqrt(eps): judged by its budgets
    assert _worst(twin_case(), _flat(*_jax_vjp(*twin_case()))) < 0.2


def test_oracle_matches_finite_differences(make_case):
    x, p, s = make_case(3, 2, 3, 3, 2)
    x, yb = x.astype(np.float64), np.random.default_rng(3).standard_normal(x.shape)
    from resblock.spec import oracle

    def loss(xx, pp):
        return float(np.sum(oracle.forward(xx, pp, s).y * yb))

    bw = backward.backward(x, p, s, yb)
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 1, 1)]:
        d = np.zeros_like(x)
        d[idx] = h
        fd = (loss(x + d, p) - loss(x - d, p)) / (2 * h)
        assert fd == pytest.approx(bw.x_bar[idx], rel=1e-5, abs=1e-7)
    pk = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in p.items()}
    for layer, leaf, idx in [("Conv_1", "kernel", (0, 2, 1, 0)), ("BatchNorm_0", "scale", (1,)),
                             ("Conv_0", "bias", (0,))]:
        up = {k: {kk: vv.copy() for kk, vv in v.items()} for k, v in pk.items()}
        dn = {k: {kk: vv.copy() for kk, vv in v.items()} for k, v in pk.items()}
        up[layer][leaf][idx] += h
        dn[layer][leaf][idx] -= h
        fd = (loss(x, up) - loss(x, dn)) / (2 * h)
        assert fd == pytest.approx(bw.params_bar[layer][leaf][idx], rel=1e-5, abs=1e-7)


def test_conv_bias_gradients_are_zero_and_budgeted(cases):
    x, p, s, yb = cases[0]
    bw = backward.backward(x, p, s, yb)
    b = emb.budgets(x, p, s, yb, bw)
    for conv in ("Conv_0", "Conv_1"):
        assert np.max(np.abs(bw.params_bar[conv]["bias"])) < 1e-12
        assert np.all(b.fp32[f"{conv}/bias"] > 1e-7)  # rounding noise, not a share of 0


def test_float32_backwards_conform(cases):
    nb = _numpy_example()
    for case in cases + [twin_case()]:
        assert _worst(case, _flat(*nb.backward(*case))) < 0.2
        assert _worst(case, _flat(*_jax_vjp(*case))) < 0.2


def test_one_value_per_channel_gradients_are_exact():
    x, p, s, yb = twin_case()
    x, yb = x[:1], yb[:1]
    bw = backward.backward(x, p, s, yb)
    b = emb.budgets(x, p, s, yb, bw)
    for name in ("Conv_0/bias", "Conv_1/bias", "Conv_0/kernel", "BatchNorm_0/scale"):
        layer, leaf = name.split("/")
        assert np.all(bw.params_bar[layer][leaf] == 0) and np.all(b.fp32[name] == 0)


def test_relu_derivative_at_zero_matters_but_is_within_the_forward_rounding():
    """On a twin case relu1 sees exactly 0 in the oracle and in Flax, and the convention
    changes x_bar; but a correct float32 BatchNorm may put that input at +-1e-7 (PyTorch's
    CPU F.batch_norm does), so the budgets admit either side (spec 10.2)."""
    x, p, s, yb = twin_case()
    bw = backward.backward(x, p, s, yb)
    assert np.all(bw.forward.stages["bn1"] == 0)  # relu1 sees exactly 0
    nb = _numpy_example()
    got = _flat(*nb.backward(x, p, s, yb))
    assert _worst((x, p, s, yb), got) < 1
    # derivative 1 at 0 (the mask bn1 >= 0): x_bar gains conv1's path
    one_at_zero = dict(got)
    c1_bar = backward.batch_norm_backward(
        bw.forward.stages["conv1"], p["BatchNorm_0"]["scale"], bw.cotangents["relu1"])[0]
    one_at_zero["x"] = bw.cotangents["sum"] + backward.conv3x3_input_grad(
        c1_bar, np.asarray(p["Conv_0"]["kernel"], np.float64))
    assert np.max(np.abs(one_at_zero["x"] - bw.x_bar)) > 1e-2
    assert _worst((x, p, s, yb), one_at_zero) < 1


def test_zero_cotangent_gives_zero_budgets():
    x, p, s, yb = twin_case()
    yb = np.zeros_like(yb)
    bw = backward.backward(x, p, s, yb)
    errs = emb.raw_errors(x, p, s, yb, bw)
    for e in errs.values():  # y_bar = 0: every gradient exactly 0, and so its error
        for part in (e.v, e.k, e.m, e.vs, e.ks, e.ms):
            assert np.all(np.asarray(part) == 0)


def test_conv_gradients_in_blocks_of_samples_agree_with_the_whole_tensor():
    """5 samples of 30x30 (4500 positions): two blocks. The input gradient is the same
    sums element by element (bit for bit); the kernel gradient adds the blocks' sums
    (a float64 rounding from the single sum), and is bit for bit the single sum when
    one block holds everything."""
    from resblock.spec.backward import conv3x3_input_grad, conv3x3_kernel_grad

    rng = np.random.default_rng(8)
    a = rng.standard_normal((5, 30, 30, 3))
    c_bar = rng.standard_normal((5, 30, 30, 2))
    kernel = rng.standard_normal((3, 3, 3, 2))
    k_whole = _kernel_grad_whole(a, c_bar)
    a_whole = np.zeros((5, 32, 32, 3))
    for i in range(3):
        for j in range(3):
            a_whole[:, i:i + 30, j:j + 30, :] += c_bar @ kernel[i, j].T
    assert np.array_equal(conv3x3_input_grad(c_bar, kernel), a_whole[:, 1:31, 1:31, :])
    got = conv3x3_kernel_grad(a, c_bar)
    assert np.allclose(got, k_whole, rtol=1e-13, atol=1e-12)
    assert np.array_equal(conv3x3_kernel_grad(a[:4], c_bar[:4]),  # 3600: one block
                          _kernel_grad_whole(a[:4], c_bar[:4]))


def _kernel_grad_whole(a, c_bar):
    n, h, w, ci = a.shape
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.empty((3, 3, ci, c_bar.shape[-1]))
    for i in range(3):
        for j in range(3):
            out[i, j] = ap[:, i:i + h, j:j + w, :].reshape(-1, ci).T @ \
                c_bar.reshape(-1, c_bar.shape[-1])
    return out


@pytest.mark.parametrize("n_cores", [1, 2, 3])
def test_kernel_gradient_blocks_on_every_core_add_in_block_order(monkeypatch, n_cores):
    """7 samples of 70x70 (one a block): the blocks' products run a wave of as many as
    there are cores at a time, and their sums are added in block order: bit for bit the
    blocks one after the other, whatever the core count, zeros' signs included."""
    from resblock.spec.backward import conv3x3_kernel_grad
    from resblock.spec.error_model import sample_blocks

    monkeypatch.setattr("resblock.spec.backward.cores", lambda: n_cores)
    rng = np.random.default_rng(9)
    a = np.abs(rng.standard_normal((7, 70, 70, 3)))
    c_bar = rng.standard_normal((7, 70, 70, 2))
    c_bar[..., 1] = -0.0  # a column of zeros
    blocks = sample_blocks(7, 70, 70)
    assert len(blocks) == 7
    want = _kernel_grad_whole(a[blocks[0]], c_bar[blocks[0]])
    for blk in blocks[1:]:
        want += _kernel_grad_whole(a[blk], c_bar[blk])
    got = conv3x3_kernel_grad(a, c_bar)
    assert np.array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))
