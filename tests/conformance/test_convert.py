"""Tests of resblock.conformance.convert: Flax names/HWIO <-> PyTorch state_dict, running var."""

from __future__ import annotations

import numpy as np
import pytest

from resblock.conformance import convert
from resblock.conformance.mistakes.variants import make_forward


def _variables(f=3, seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    params = {"Conv_0": {"kernel": r(3, 3, f, f), "bias": r(f)},
              "BatchNorm_0": {"scale": r(f), "bias": r(f)},
              "Conv_1": {"kernel": r(3, 3, f, f), "bias": r(f)},
              "BatchNorm_1": {"scale": r(f), "bias": r(f)}}
    stats = {b: {"mean": r(f), "var": np.abs(r(f)) + 0.5} for b in ("BatchNorm_0", "BatchNorm_1")}
    return params, stats


def test_round_trip_is_exact():
    params, stats = _variables()
    sd = convert.to_torch_state_dict(params, stats)
    assert sd["conv1.weight"].shape == (3, 3, 3, 3)
    assert sd["bn2.running_var"] is not stats["BatchNorm_1"]["var"]  # a writable copy
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    p2, s2 = convert.from_torch_state_dict(sd)
    for tree, back in ((params, p2), (stats, s2)):
        for layer, leaves in tree.items():
            for leaf, a in leaves.items():
                assert np.array_equal(back[layer][leaf], a), (layer, leaf)


def test_kernel_is_transposed_not_reshaped():
    k = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)
    w = convert.hwio_to_oihw(k)
    assert w.shape == (4, 2, 3, 3)
    assert w[3, 1, 0, 2] == k[0, 2, 1, 3]
    assert np.array_equal(convert.oihw_to_hwio(w), k)


def test_spec_running_var_undoes_the_unbiased_update():
    old = np.array([0.5, 1.0, 2.0], np.float32)
    batch_biased = np.array([0.3, 1.7, 0.01])
    n = 5
    torch_new = 0.99 * old + 0.01 * batch_biased * n / (n - 1)
    want = 0.99 * old + 0.01 * batch_biased
    got = convert.spec_running_var(old, torch_new, n)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        convert.spec_running_var(old, torch_new, 1)
    assert convert.torch_momentum() == pytest.approx(0.01)


def test_torch_module_loaded_from_state_dict_conforms():
    torch = pytest.importorskip("torch")
    from torch import nn

    params, stats = _variables(f=4, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 4)).astype(np.float32)
    block = nn.ModuleDict({"conv1": nn.Conv2d(4, 4, 3, padding=1),
                           "bn1": nn.BatchNorm2d(4, momentum=0.01),
                           "conv2": nn.Conv2d(4, 4, 3, padding=1),
                           "bn2": nn.BatchNorm2d(4, momentum=0.01)}).train()
    sd = convert.to_torch_state_dict(params, stats)
    block.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        h = torch.relu(block["bn1"](block["conv1"](xt)))
        y = torch.relu(block["bn2"](block["conv2"](h)) + xt).permute(0, 2, 3, 1).numpy()
    y_ref, stats_ref = make_forward("correct_float64")(x, params, stats)
    np.testing.assert_allclose(y, y_ref, atol=1e-4)
    p_back, s_back = convert.from_torch_state_dict(block.state_dict())
    n = 2 * 3 * 5
    for flax_bn in ("BatchNorm_0", "BatchNorm_1"):
        var = convert.spec_running_var(stats[flax_bn]["var"], s_back[flax_bn]["var"], n)
        np.testing.assert_allclose(var, stats_ref[flax_bn]["var"], rtol=1e-5)
        np.testing.assert_allclose(s_back[flax_bn]["mean"], stats_ref[flax_bn]["mean"],
                                   atol=1e-6)
