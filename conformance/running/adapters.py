"""Between the kit's arrays and an implementation's: layouts, conversion, structure checks.

Pure functions. Nothing here imports torch or jax: objects are converted through their
own methods (``.detach().cpu().numpy()``, ``__array__``, DLPack).
"""

from __future__ import annotations

import numpy as np

from resblock.conformance.running.wire import Opaque
from resblock.spec.constants import PARAM_NAMES, STAT_NAMES

LAYOUTS = ("nhwc", "nchw")


class ContractError(Exception):
    """The implementation returned something that breaks the contract (per-case failure)."""


def to_user_layout(x, params, layout: str):
    """Convert NHWC x and HWIO kernels to the implementation's layout."""
    if layout == "nhwc":
        return x, params
    x = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    p = {k: dict(v) for k, v in params.items()}
    for layer in [name for name in ("Conv_0", "Conv_1") if name in p]:
        p[layer]["kernel"] = np.ascontiguousarray(np.transpose(p[layer]["kernel"], (3, 2, 0, 1)))
    return x, p


def output_from_user_layout(y: np.ndarray, layout: str) -> np.ndarray:
    return y if layout == "nhwc" else np.transpose(y, (0, 2, 3, 1))


def user_index(index_nhwc: tuple, layout: str) -> tuple:
    """An NHWC index as the implementation sees it."""
    if layout == "nchw" and len(index_nhwc) == 4:
        n, h, w, c = index_nhwc
        return (n, c, h, w)
    return index_nhwc


def frozen_copy(a: np.ndarray) -> np.ndarray:
    """A fresh read-only copy: the implementation can never change the goldens."""
    c = np.array(a, copy=True)
    c.flags.writeable = False
    return c


def frozen_tree(tree: dict) -> dict:
    return {k: {kk: frozen_copy(vv) for kk, vv in v.items()} for k, v in tree.items()}


def as_numpy(obj, what: str) -> np.ndarray:
    """Convert NumPy, JAX, PyTorch (CPU/GPU), ``__array__`` or DLPack objects.

    Raises:
      ContractError: the object is not an array, or converting it failed (a torch
        bfloat16 or meta tensor, an ``__array__`` that raises, ...).
    """
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, Opaque):  # described by the worker process, not sent
        if obj.reason:
            raise ContractError(f"{what}: {obj.reason}")
        raise ContractError(_not_an_array(what, obj.type_name))
    try:
        return _as_numpy(obj, what)
    except ContractError:
        raise
    except Exception as e:  # noqa: BLE001 - the object's own conversion may raise anything
        raise ContractError(f"{what}: {conversion_failure(obj, e)}") from None


def conversion_failure(obj, e: BaseException) -> str | None:
    """Why converting ``obj`` to NumPy raised ``e`` (None: ``obj`` is no array at all)."""
    if isinstance(e, ContractError):
        return None
    hint = ""
    if "BFloat16" in str(e) or "bfloat16" in str(e):
        hint = " (return float32: .float() or .astype(np.float32))"
    return (f"converting the {type(obj).__name__} to a NumPy array failed: "
            f"{type(e).__name__}: {e}{hint}")


def type_name(obj) -> str:
    """The name of ``obj``'s type, also for what the worker process only described."""
    return obj.type_name if isinstance(obj, Opaque) else type(obj).__name__


def _not_an_array(what: str, name: str) -> str:
    return (f"{what} is a {name}, which is not an array "
            "(expected NumPy, JAX, PyTorch or an object with __array__)")


def _as_numpy(obj, what: str) -> np.ndarray:
    mod = type(obj).__module__
    if mod.startswith("torch") and hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    if hasattr(obj, "__array__"):
        return np.asarray(obj)
    if hasattr(obj, "__dlpack__"):
        return np.from_dlpack(obj)
    if isinstance(obj, (float, int, list, tuple)):
        return np.asarray(obj)
    raise ContractError(_not_an_array(what, type(obj).__name__))


def check_array(a, what: str, shape: tuple, layout_hint: str = "") -> np.ndarray:
    a = as_numpy(a, what)
    if a.dtype != np.float32:
        raise ContractError(f"{what} has dtype {a.dtype}; the contract is float32 "
                            "(cast with .astype(np.float32) or .float())")
    if tuple(a.shape) != tuple(shape):
        hint = ""
        if layout_hint and sorted(a.shape) == sorted(shape):
            hint = f" ({layout_hint})"
        raise ContractError(f"{what} has shape {tuple(a.shape)}, expected {tuple(shape)}{hint}")
    return a


def check_stats(stats, features: int) -> dict:
    """Validate a returned batch_stats tree; return {'BatchNorm_0/mean': array, ...}."""
    if hasattr(stats, "unfreeze"):
        stats = stats.unfreeze()
    if not isinstance(stats, dict):
        raise ContractError(f"new batch_stats is a {type_name(stats)}, expected a dict "
                            "{'BatchNorm_0': {'mean', 'var'}, 'BatchNorm_1': {...}}")
    flat = [k for k in stats if isinstance(k, str) and "/" in k]
    if flat:
        raise ContractError(f"new batch_stats has flat keys such as {flat[0]!r}; nest them: "
                            "{'BatchNorm_0': {'mean': ..., 'var': ...}, 'BatchNorm_1': {...}}")
    out = {name: check_array(nested_leaf(stats, name, "new batch_stats"),
                             f"batch_stats {name}", (features,)) for name in STAT_NAMES}
    want = {name.split("/")[0] for name in STAT_NAMES}
    extra = [repr(k) for k in stats if k not in want] + \
        [f"{k}/{leaf}" for k in sorted(want) for leaf in stats[k]
         if f"{k}/{leaf}" not in STAT_NAMES]
    if extra:
        raise ContractError(f"new batch_stats has keys the contract does not have: "
                            f"{', '.join(map(str, extra[:4]))}; return exactly "
                            "{'BatchNorm_0': {'mean', 'var'}, 'BatchNorm_1': {...}}")
    return out


def nested_leaf(tree: dict, name: str, what: str):
    """``tree[layer][leaf]`` for ``name = "layer/leaf"``, or a ContractError naming what
    is missing and showing what the tree has."""
    layer, leaf = name.split("/")
    if layer not in tree or not isinstance(tree[layer], dict) or leaf not in tree[layer]:
        have = {k: sorted(v) if isinstance(v, dict) else type_name(v)
                for k, v in tree.items()}
        raise ContractError(f"{what} lacks {layer}/{leaf}; got {have}")
    return tree[layer][leaf]


def split_result(result, api: str):
    """Split a return value into (y, stats or None, intermediates or None)."""
    if api == "seeded":
        if isinstance(result, tuple):
            if len(result) != 2:
                raise ContractError(f"seeded API returned a tuple of {len(result)} items; "
                                    "expected output_1d or (output_1d, batch_stats)")
            return result[0], result[1], None
        return result, None, None
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise ContractError(
            f"forward returned {type_name(result)}; expected a tuple "
            "(y, new_batch_stats) or (y, new_batch_stats, intermediates)"
        )
    inter = result[2] if len(result) == 3 else None
    if inter is not None and not isinstance(inter, dict):
        raise ContractError("the optional third return value must be a dict {stage: array}")
    if inter:
        inter = {k: as_numpy(v, f"intermediate {k!r}") for k, v in inter.items()}
    return result[0], result[1], inter


def split_backward(result, case, layout: str) -> dict:
    """Validate a backward result ``(x_bar, params_bar)`` and return the flat gradients
    ``{"x": (N,H,W,C), "Conv_0/kernel": (3,3,C,F) HWIO, ...}`` in the kit's layout."""
    if hasattr(result, "unfreeze") or not isinstance(result, (tuple, list)) or \
            len(result) != 2:
        items = f" of {len(result)} items" if isinstance(result, (tuple, list)) else ""
        raise ContractError(f"backward returned {type_name(result)}{items}; expected a "
                            "tuple (x_bar, params_bar)")
    x_bar, pbar = result
    c = case
    want = (c.n, c.h, c.w, c.features) if layout == "nhwc" else (c.n, c.features, c.h, c.w)
    other = "nchw" if layout == "nhwc" else "nhwc"
    x_bar = check_array(x_bar, "x_bar", want, f"is the implementation {other.upper()}? try "
                        f"--layout {other}")
    out = {"x": output_from_user_layout(x_bar, layout)}
    if hasattr(pbar, "unfreeze"):
        pbar = pbar.unfreeze()
    if not isinstance(pbar, dict) or any(isinstance(k, str) and "/" in k for k in pbar):
        raise ContractError(f"params_bar is a {type_name(pbar)}"
                            f"{' with flat keys' if isinstance(pbar, dict) else ''}; expected "
                            "a dict nested like params: {'Conv_0': {'kernel', 'bias'}, "
                            "'BatchNorm_0': {'scale', 'bias'}, ...}")
    f = c.features
    kshape = (3, 3, f, f) if layout == "nhwc" else (f, f, 3, 3)
    for name in PARAM_NAMES:
        leaf = name.split("/")[1]
        a = check_array(nested_leaf(pbar, name, "params_bar"), f"params_bar {name}",
                        kshape if leaf == "kernel" else (f,))
        if leaf == "kernel" and layout == "nchw":
            a = np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO
        out[name] = a
    return out


def split_inference(result, case, layout: str) -> np.ndarray:
    """Validate an inference result ``y`` (the output alone: inference updates no
    statistics) and return it in NHWC."""
    if isinstance(result, (tuple, list)) or hasattr(result, "unfreeze") or \
            isinstance(result, dict):
        items = f" of {len(result)} items" if isinstance(result, (tuple, list)) else ""
        raise ContractError(f"infer returned a {type_name(result)}{items}; the inference "
                            "contract is infer(x, params, batch_stats) -> y, the output "
                            "alone (inference mode updates no statistics; a training port "
                            "that returns (y, new_batch_stats) is checked with --api "
                            "functional)")
    c = case
    want = (c.n, c.h, c.w, c.features) if layout == "nhwc" else (c.n, c.features, c.h, c.w)
    other = "nchw" if layout == "nhwc" else "nhwc"
    y = check_array(result, "output y", want, f"is the implementation {other.upper()}? try "
                    f"--layout {other}")
    return output_from_user_layout(y, layout)


def flat_params(params: dict) -> dict:
    return {n: params[n.split("/")[0]][n.split("/")[1]] for n in PARAM_NAMES}
