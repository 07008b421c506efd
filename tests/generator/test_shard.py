"""generator/shard.py: deterministic, balanced, complete splits of a grid."""

from __future__ import annotations

import pytest

from resblock.errors import GridError
from resblock.generator.grid import preset_cases
from resblock.generator.shard import parse_shard, plan, shard_cases, unit_cost


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 32])
def test_shards_partition_the_grid(n):
    cases = preset_cases("default")
    parts = [shard_cases(cases, k, n) for k in range(1, n + 1)]
    ids = [c.id for p in parts for c in p]
    assert sorted(ids) == sorted(c.id for c in cases)  # no gap, no overlap
    assert all(parts), "every shard gets work"
    assert parts == [shard_cases(cases, k, n) for k in range(1, n + 1)]  # deterministic


def test_shards_balanced_by_cost_not_count():
    cases = preset_cases("large")
    parts = [shard_cases(cases, k, 4) for k in range(1, 5)]
    from resblock.generator.grid import group_cases

    loads = [sum(unit_cost(g) for g in group_cases(p)) for p in parts]
    assert max(loads) <= 1.35 * min(loads), loads
    counts = [len(p) for p in parts]
    assert max(counts) != min(counts)  # cheap groups are many cases, costly ones few


def test_more_shards_than_groups_split_groups_into_cases():
    cases = preset_cases("smoke")  # 5 groups of one case each
    parts = [shard_cases(cases, k, 5) for k in range(1, 6)]
    assert sorted(len(p) for p in parts) == [1, 1, 1, 1, 1]
    with pytest.raises(GridError, match="only 5 cases"):
        shard_cases(cases, 1, 6)


@pytest.mark.parametrize("text,want", [("1/4", (1, 4)), (" 3 / 3 ", (3, 3))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["0/4", "5/4", "1-4", "a/b", "", "1/0"])
def test_parse_shard_errors(text):
    with pytest.raises(GridError):
        parse_shard(text)


def test_plan_longest_first():
    cases = preset_cases("bench")
    from resblock.generator.grid import group_cases

    bins = plan(group_cases(cases), 2)
    loads = [sum(unit_cost(g) for g in b) for b in bins]
    assert abs(loads[0] - loads[1]) <= max(unit_cost(g) for g in group_cases(cases))
