"""Tests for generator/provenance.py: creation time, environment and computation records."""

from __future__ import annotations

import jax
import pytest

from resblock.generator import provenance


def test_source_date_epoch_sets_the_creation_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert provenance.created_timestamp() == "2023-11-14T22:13:20Z"


def test_creation_time_defaults_to_now_in_utc(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    t = provenance.created_timestamp()
    assert len(t) == 20 and t.endswith("Z") and t[10] == "T"


def test_malformed_source_date_epoch_is_named(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    from resblock.errors import HarnessError

    with pytest.raises(HarnessError,
                       match="SOURCE_DATE_EPOCH must be an integer number of seconds, got "
                             "'yesterday'"):
        provenance.created_timestamp()


def test_environment_records_versions_and_device():
    import flax
    import h5py
    import numpy

    env = provenance.environment(jax.devices("cpu")[0])
    assert env["jax"] == jax.__version__
    assert env["flax"] == flax.__version__
    assert env["numpy"] == numpy.__version__
    assert env["h5py"] == h5py.__version__
    assert env["backend"] == "cpu"
    assert env["gpu_driver"] is None and env["cuda"] is None
    assert env["cpu"]
    assert env["xla_target"] == provenance.xla_cpu_target()


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma avx avx2 bmi2 smep rdrand

processor\t: 1
vendor_id\t: AuthenticAMD
"""
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 ", "avx2 avx512f avx512bw ")


def test_xla_target_tells_apart_hosts_with_the_same_model_string(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    zen3, zen4 = provenance.xla_cpu_target(ZEN3), provenance.xla_cpu_target(ZEN4)
    assert zen3.endswith("; AuthenticAMD/25/1; avx avx2 bmi2 fma sse sse2 ssse3")
    assert zen4.endswith("; AuthenticAMD/25/17; avx avx2 avx512bw avx512f bmi2 fma sse sse2 "
                         "ssse3")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    assert provenance.xla_cpu_target(ZEN4).endswith("; max_isa=AVX2")


def test_xla_target_reads_arm_features():
    arm = ("processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm crc32\n"
           "CPU implementer\t: 0x41\nCPU part\t: 0xd40\n")
    assert provenance.xla_cpu_target(arm).split("; ")[1:3] == [
        "0x41/0xd40", "asimd bf16 fp i8mm sve sve2"]


def test_computation_records_bit_changing_flags(monkeypatch):
    for k in provenance.BIT_CHANGING_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    comp = provenance.computation()
    assert comp["env_flags"] == {"NVIDIA_TF32_OVERRIDE": "0"}
    assert comp["xla_flags"] == ""
    assert comp["precision"] == "highest"
    assert comp["derivation_device"] == "cpu"
    assert comp["prng"]["default_prng_impl"] == "threefry2x32"
