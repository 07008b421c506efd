"""Where and how a golden was computed: versions, machine, device, flags, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
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


# The /proc/cpuinfo flags that LLVM's host detection turns into code-generation features
# (vector width, FMA, AVX-512 and its extensions...): XLA compiles its CPU kernels for the
# host's features, and they, not the marketing model string, decide the rounding.
_ISA_FLAG = re.compile(r"^(sse|ssse|avx|fma|f16c|amx|bmi|popcnt|lzcnt|abm|movbe|adx|gfni|vaes"
                       r"|vpclmul|sha|cx16|xsave|prfchw|fp$|asimd|sve|sme$|sme2|i8mm|bf16|dotprod)")


def xla_cpu_target(cpuinfo: str | None = None) -> str:
    """What XLA's CPU compiler targets on this host: architecture, vendor, family and model
    (LLVM's host CPU name is derived from them) and the instruction-set features it may use,
    plus a `--xla_cpu_max_isa` cap from XLA_FLAGS. Two hosts with the same string and the
    same versions compile the same kernels, so the reference's float32 bits agree; hosts
    whose model strings match can still differ here (a virtualised "AMD EPYC" may be Zen 3
    without AVX-512 or Zen 4 with it)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
    ident = [fields[k] for k in ("vendor_id", "cpu family", "model", "CPU implementer",
                                 "CPU architecture", "CPU variant", "CPU part") if k in fields]
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    isa = sorted({f for f in flags if _ISA_FLAG.match(f)})
    cap = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    parts = [platform.machine(), "/".join(ident) or platform.processor() or "unknown",
             " ".join(isa) or "no-isa-flags"]
    if cap:
        parts.append(f"max_isa={cap.group(1)}")
    return "; ".join(parts)


def created_timestamp() -> str:
    """UTC creation time; SOURCE_DATE_EPOCH (reproducible builds) takes precedence."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde is not None:
        try:
            t = _dt.datetime.fromtimestamp(int(sde), tz=_dt.timezone.utc)
        except ValueError:
            from resblock.errors import HarnessError

            raise HarnessError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, got "
                               f"{sde!r}; unset it or set e.g. SOURCE_DATE_EPOCH=1795651200") \
                from None
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
        cuda, gpu_driver = _gpu_versions(device)
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
        "xla_target": xla_cpu_target() if backend == "cpu" else None,
        "backend": backend,
        "device": str(getattr(device, "device_kind", backend)),
        "gpu_driver": gpu_driver,
        "cuda": cuda,
    }


def computation(precision: str = "highest", cached: bool = False) -> dict:
    from resblock.spec.derivation import prng_config

    return {
        "precision": precision,
        "execution": "jax.jit(apply) per shape group, one case per call; inputs and init on CPU",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "env_flags": {k: os.environ[k] for k in BIT_CHANGING_ENV if k in os.environ},
        "prng": prng_config(),
        "derivation_device": "cpu",
        "compilation_cache": cached,
        "oracle": "resblock.spec.oracle (NumPy float64, two-pass variance)",
    }


def _gpu_versions(device) -> tuple[str | None, str | None]:
    """(CUDA/ROCm runtime as the backend reports it, driver version), best effort."""
    import subprocess

    runtime = driver = None
    try:
        runtime = str(device.client.platform_version).strip() or None
    except Exception:  # noqa: BLE001 - recorded as unknown
        runtime = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        driver = out.stdout.strip().splitlines()[0] or None
    except Exception:  # noqa: BLE001 - no nvidia-smi (ROCm, containers): unknown
        driver = None
    return runtime, driver
