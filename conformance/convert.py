"""Mechanical conversions between the kit's Flax-named variables and PyTorch's names.

Port authors import these instead of copying them (``from resblock.conformance import
convert``). Pure NumPy: nothing here imports torch; tensors passed in are converted
through their own ``.detach().cpu().numpy()``.

Names: the kit's ``params``/``batch_stats`` are Flax's (``Conv_0/kernel`` HWIO, ...,
``BatchNorm_1/var``); a PyTorch ``state_dict`` of a torchvision-style ``BasicBlock`` uses
``conv1.weight`` (OIHW), ``conv1.bias``, ``bn1.weight`` (scale), ``bn1.bias``,
``bn1.running_mean``, ``bn1.running_var``, ``bn1.num_batches_tracked``, then ``conv2``
and ``bn2``. Pass ``names`` to use other module names.

Running variance: PyTorch's training-mode BatchNorm updates ``running_var`` with the
unbiased batch variance ``var * n / (n - 1)`` (``n = N*H*W``); the spec stores the biased
one. :func:`spec_running_var` converts PyTorch's updated ``running_var`` to the spec's.
Loading incoming statistics needs no conversion (a running variance is just a number).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from resblock.spec.constants import MOMENTUM

#: Flax module name -> PyTorch module name of a torchvision-style BasicBlock.
TORCH_NAMES: dict[str, str] = {
    "Conv_0": "conv1", "BatchNorm_0": "bn1", "Conv_1": "conv2", "BatchNorm_1": "bn2",
}

#: Flax leaf -> PyTorch parameter or buffer name.
_CONV_LEAVES = {"kernel": "weight", "bias": "bias"}
_BN_PARAM_LEAVES = {"scale": "weight", "bias": "bias"}
_BN_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}


def hwio_to_oihw(kernel) -> np.ndarray:
    """A Flax ``(3, 3, C, F)`` kernel as PyTorch's ``(F, C, 3, 3)`` (a transpose, not a reshape)."""
    return np.ascontiguousarray(np.transpose(_np(kernel), (3, 2, 0, 1)))


def oihw_to_hwio(weight) -> np.ndarray:
    """A PyTorch ``(F, C, 3, 3)`` weight as Flax's ``(3, 3, C, F)``."""
    return np.ascontiguousarray(np.transpose(_np(weight), (2, 3, 1, 0)))


def to_torch_state_dict(params: Mapping, batch_stats: Mapping, *,
                        names: Mapping[str, str] = TORCH_NAMES,
                        num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
    """The ``state_dict`` of a torchvision-style block, as writable NumPy arrays.

    Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in
    sd.items()})``. The block's convolutions MUST have ``bias=True`` (torchvision's
    ``BasicBlock`` has ``bias=False``: the pitfall ``missing_conv_bias``).

    Args:
      params: the kit's ``params`` (nested Flax names, HWIO kernels).
      batch_stats: the kit's incoming ``batch_stats``.
      names: Flax module name -> PyTorch module name (default: :data:`TORCH_NAMES`).
      num_batches_tracked: add ``<bn>.num_batches_tracked = 0`` (int64) entries, which
        ``BatchNorm2d.load_state_dict`` expects (default: True).
    """
    sd: dict[str, np.ndarray] = {}
    for flax_name, torch_name in names.items():
        if flax_name.startswith("Conv"):
            conv = params[flax_name]
            sd[f"{torch_name}.weight"] = hwio_to_oihw(conv["kernel"])
            sd[f"{torch_name}.bias"] = np.array(_np(conv["bias"]), np.float32)
        else:
            for leaf, tname in _BN_PARAM_LEAVES.items():
                sd[f"{torch_name}.{tname}"] = np.array(_np(params[flax_name][leaf]), np.float32)
            for leaf, tname in _BN_STAT_LEAVES.items():
                sd[f"{torch_name}.{tname}"] = np.array(_np(batch_stats[flax_name][leaf]),
                                                       np.float32)
            if num_batches_tracked:
                sd[f"{torch_name}.num_batches_tracked"] = np.array(0, np.int64)
    return sd


def from_torch_state_dict(state_dict: Mapping, *,
                          names: Mapping[str, str] = TORCH_NAMES) -> tuple[dict, dict]:
    """``(params, batch_stats)`` with Flax names and HWIO kernels from a ``state_dict``.

    Values may be tensors (any device) or arrays; ``num_batches_tracked`` is ignored.
    Running variances are taken as stored: convert a variance that PyTorch updated in
    training mode with :func:`spec_running_var` first.
    """
    params: dict = {}
    stats: dict = {}
    for flax_name, torch_name in names.items():
        if flax_name.startswith("Conv"):
            params[flax_name] = {
                "kernel": oihw_to_hwio(state_dict[f"{torch_name}.weight"]).astype(np.float32),
                "bias": np.array(_np(state_dict[f"{torch_name}.bias"]), np.float32)}
        else:
            params[flax_name] = {leaf: np.array(_np(state_dict[f"{torch_name}.{t}"]), np.float32)
                                 for leaf, t in _BN_PARAM_LEAVES.items()}
            stats[flax_name] = {leaf: np.array(_np(state_dict[f"{torch_name}.{t}"]), np.float32)
                                for leaf, t in _BN_STAT_LEAVES.items()}
    return params, stats


def torch_momentum(flax_momentum: float = MOMENTUM) -> float:
    """PyTorch's ``momentum`` for Flax's: PyTorch weighs the new value, Flax the old one."""
    return 1.0 - flax_momentum


def spec_running_var(old_var, torch_new_var, n: int,
                     flax_momentum: float = MOMENTUM) -> np.ndarray:
    """The spec's updated running variance from PyTorch's training-mode update.

    PyTorch stores ``new = m_old * old + (1 - m_old) * var * n / (n - 1)`` (``m_old =
    flax_momentum``, ``n = N*H*W`` values per channel); the spec stores ``m_old * old +
    (1 - m_old) * var``. Since ``new - m_old * old`` is the unbiased term, the spec's value
    is ``new - (new - m_old * old) / n``, computed here in float64 and returned as float32.

    Apply it to PyTorch's ``nn.BatchNorm2d`` / ``F.batch_norm`` results only. Do NOT apply
    it to a running variance that is already biased, such as ONNX Runtime's
    ``BatchNormalization`` in training mode (pitfall ``biased_running_var_converted``).

    Raises:
      ValueError: ``n < 2``; PyTorch cannot update with one value per channel (spec 3.4:
        the spec's value is then ``flax_momentum * old_var``).
    """
    if n < 2:
        raise ValueError(f"n = N*H*W = {n}: PyTorch has no unbiased variance with one value "
                         f"per channel; the spec's running var is then {flax_momentum} * old_var")
    old = np.asarray(_np(old_var), np.float64)
    new = np.asarray(_np(torch_new_var), np.float64)
    return (new - (new - flax_momentum * old) / n).astype(np.float32)


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)
