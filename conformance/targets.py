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
        sys.path.insert(0, str(path.resolve().parent))
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            raise TargetError(f"--impl {target!r}: importing {path} failed: "
                              f"{type(e).__name__}: {e}") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # noqa: BLE001
            raise TargetError(f"--impl {target!r}: cannot import module {where!r}: "
                              f"{type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n in vars(module) if callable(vars(module)[n])
                        and not n.startswith("_"))
        raise TargetError(f"--impl {target!r}: {where} has no attribute {name!r}; "
                          f"callables there: {', '.join(public) or 'none'}")
    if not callable(fn):
        raise TargetError(f"--impl {target!r}: {name} is not callable")
    return fn
