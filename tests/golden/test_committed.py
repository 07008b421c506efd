"""The committed golden set (golden/default.h5): intact, and reproducible.

A sample of the committed cases is regenerated and compared with the stored data:
- inputs, parameters and incoming stats are derived on the CPU backend from the case's
  fields alone, so they must be bit-identical whenever the JAX version and PRNG
  configuration match the metadata (they are what makes two golden sets comparable);
- reference outputs and the float64 oracle are bit-identical only in the same
  environment: same jax/jaxlib/flax/numpy versions and the same XLA CPU target (vendor,
  family/model and instruction-set features, `environment.xla_target`; XLA's code
  generation follows the features, and two hosts that both report "AMD EPYC" can differ
  in AVX-512 and so in the last bits). Elsewhere, and for files that predate the record,
  they must agree within the spec's fp32 tolerance against the stored oracle, which is
  what conformance means.
"""

from __future__ import annotations

import numpy as np
import pytest

from resblock.generator.engine import ReferenceRunner, compute_group, stats_view
from resblock.generator.grid import group_cases, preset_cases
from resblock.generator.provenance import xla_cpu_target
from resblock.golden.cli import default_goldens
from resblock.golden.manifest import load_manifest, manifest_problems
from resblock.golden.reader import GoldenFile
from resblock.golden.store import INPUT_ARRAYS, ORACLE_ARRAYS, REFERENCE_ARRAYS
from resblock.spec import tolerance
from resblock.spec.derivation import prng_config

SAMPLE = (
    "seeded-normal-n1-4x4-f4-s0",
    "seeded-normal-n1-7x13-f8-s1",
    "functional-normal-n4-3x5-f8-s0",
    "stress-lowamp-n2-8x8-f4-s1",
    "stress-normal-n1-1x1-f8-s0",
    "stress-offset-n2-6x6-f4-s0",
)


@pytest.fixture(scope="module")
def committed():
    (path,) = default_goldens()
    with GoldenFile(path) as gf:
        yield gf


def _same_environment(meta) -> bool:
    import flax
    import jax
    import jaxlib

    env = meta["environment"]
    return (env["jax"], env["jaxlib"], env["flax"], env["numpy"], env.get("xla_target")) == (
        jax.__version__, jaxlib.__version__, flax.__version__, np.__version__,
        xla_cpu_target())


def test_manifest_matches_committed_files():
    manifest = load_manifest()
    assert [f["preset"] for f in manifest["files"]] == ["default"]
    assert manifest_problems() == []


def test_committed_set_is_the_default_preset(committed):
    assert committed.ids and sorted(committed.ids) == sorted(c.id for c in
                                                             preset_cases("default"))
    assert committed.metadata["grid"]["preset"] == "default"
    assert committed.hash_problems() == []


def test_committed_size_budget():
    manifest = load_manifest()
    assert sum(f["bytes"] for f in manifest["files"]) < 20 * 2**20


def test_regenerated_sample_matches_committed(committed):
    meta = committed.metadata
    cases = [c for c in preset_cases("default") if c.id in SAMPLE]
    assert len(cases) == len(SAMPLE)
    runner = ReferenceRunner()
    same_prng = prng_config() == meta["computation"]["prng"]
    same_env = _same_environment(meta)
    fp32 = tolerance.profile("fp32")
    for group in group_cases(cases):
        arrays, extras = compute_group(group, runner, stages=True)  # as committed
        for row, case in enumerate(group):
            stored = committed.case(case.id)
            if same_prng:
                for name in INPUT_ARRAYS:
                    np.testing.assert_array_equal(arrays[name][row], stored.arrays[name],
                                                  err_msg=f"{case.id} {name}")
            # What the spec promises on every host: the regenerated reference conforms
            # against the committed oracle and budgets.
            stats = stats_view({k: v[row] for k, v in arrays.items()}, "batch_stats_out")
            assert tolerance.worst_score(stored, arrays["y"][row], stats, fp32) <= 1.0, case.id
            if same_env:
                for name in REFERENCE_ARRAYS + ORACLE_ARRAYS:
                    np.testing.assert_array_equal(arrays[name][row], stored.arrays[name],
                                                  err_msg=f"{case.id} {name}")
                assert extras[row]["kappa"] == stored.kappa
