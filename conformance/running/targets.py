"""Load an implementation target: ``package.module:function`` or ``path/file.py:function``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from resblock.errors import TargetError


def load_target(target: str):
    """Import and return the callable named by ``target``."""
    if ":" not in target:
        raise TargetError(
            f"--impl {target!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION, "
            "e.g. examples/numpy_float32.py:forward"
        )
    where, _, name = target.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise TargetError(f"--impl {target!r}: no such file {path}")
        mod_name = f"_resblock_target_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        # The file's folder goes last on sys.path: its sibling modules import, and a file
        # named like a package (keras.py, torch.py) cannot shadow the real one.
        folder = str(path.resolve().parent)
        sys.path.append(folder)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit, GeneratorExit) as e:  # noqa: BLE001 - user code
            what = (f"called sys.exit({e.code!r}) (or exit()) while being imported; remove "
                    "it: the checker imports the file" if isinstance(e, SystemExit)
                    else f"{type(e).__name__}: {e}")
            raise TargetError(f"--impl {target!r}: importing {path} failed: {what}") from None
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(where)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            hint = ""
            local = Path(*where.split(".")).with_suffix(".py")
            if isinstance(e, ModuleNotFoundError) and local.is_file():
                hint = (f"; {local} is here: give it as a file, "
                        f"--impl {local}:{target.rpartition(':')[2]}")
            raise TargetError(f"--impl {target!r}: cannot import module {where!r}: "
                              f"{type(e).__name__}: {e}{hint}") from None
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n in vars(module) if callable(vars(module)[n])
                        and not n.startswith("_"))
        raise TargetError(f"--impl {target!r}: {where} has no attribute {name!r}; "
                          f"callables there: {', '.join(public) or 'none'}")
    if not callable(fn):
        raise TargetError(f"--impl {target!r}: {name} is not callable")
    return fn


def check_arity(fn, target: str, api: str = "functional") -> None:
    """Both APIs call the target with three positional arguments: say so once, up front
    (``resblock check`` does), rather than with the same TypeError for every case."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, C extensions: nothing to inspect
        return
    try:
        sig.bind(*([None] * (4 if api == "backward" else 3)))
    except TypeError:
        if api == "backward":
            raise TargetError(
                f"--impl {target!r}: {getattr(fn, '__name__', 'the target')}{sig} cannot be "
                "called with four arguments; the backward contract is backward(x, params, "
                "batch_stats, y_bar) -> (x_bar, params_bar)") from None
        raise TargetError(
            f"--impl {target!r}: {getattr(fn, '__name__', 'the target')}{sig} cannot be called "
            "with three arguments; the contract is forward(x, params, batch_stats) "
            "(--api functional), infer(x, params, batch_stats) (--api inference) or f(seed, "
            "x, features) (--api seeded)") from None
