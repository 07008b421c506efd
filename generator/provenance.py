"""Where and how a golden was computed: versions, machine, device, flags, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys

BIT_CHANGING_ENV = ("XLA_FLAGS", "NVIDIA_TF32_OVERRIDE", "JAX_DEFAULT_MATMUL_PRECISION",
                    "JAX_ENABLE_X64", "JAX_THREEFRY_PARTITIONABLE", "JAX_DEFAULT_PRNG_IMPL")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def created_timestamp() -> str:
    """UTC creation time; SOURCE_DATE_EPOCH (reproducible builds) takes precedence."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde is not None:
        try:
            t = _dt.datetime.fromtimestamp(int(sde), tz=_dt.timezone.utc)
        except ValueError:
            raise ValueError(f"SOURCE_DATE_EPOCH must be an integer, got {sde!r}") from None
    else:
        t = _dt.datetime.now(tz=_dt.timezone.utc).replace(microsecond=0)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def environment(device) -> dict:
    import flax
    import h5py
    import jax
    import jaxlib
    import numpy

    backend = device.platform
    gpu_driver = cuda = None
    if backend in ("gpu", "cuda", "rocm"):
        try:
            import jax.extend.backend as _b

            cuda = str(getattr(_b.get_backend(), "platform_version", None))
        except Exception:  # noqa: BLE001 - best effort, recorded as unknown
            cuda = None
    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": numpy.__version__,
        "h5py": h5py.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "backend": backend,
        "device": str(getattr(device, "device_kind", backend)),
        "gpu_driver": gpu_driver,
        "cuda": cuda,
    }


def computation() -> dict:
    from resblock.spec.derivation import prng_config

    return {
        "precision": "highest",
        "execution": "jax.jit(apply) per shape group; inputs and init on CPU",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "env_flags": {k: os.environ[k] for k in BIT_CHANGING_ENV if k in os.environ},
        "prng": prng_config(),
        "derivation_device": "cpu",
        "oracle": "resblock.spec.oracle (NumPy float64, two-pass variance)",
    }
