"""Pure helpers of the flow's steps."""

from __future__ import annotations

import pytest

from tasks.core.repair import batchable_records


@pytest.mark.parametrize(
    ("n", "lo", "hi", "in_jobs"),
    [
        (1_706, 100, 100, 1_700),  # a gap: 17 shards of 100, 6 records on-demand
        (160, 100, 150, 150),  # 1 shard can take 150 at most, 2 need 200
        (250, 100, 150, 250),  # 2 shards of 125
        (99, 100, 100, 0),  # too few for a job: all on-demand
        (20_000, 100, 50_000, 20_000),
    ],
)
def test_batchable_records_leaves_fewer_than_the_minimum_for_on_demand(n: int, lo: int, hi: int, in_jobs: int) -> None:
    got = batchable_records(n, lo, hi)
    assert got == in_jobs
    assert n - got < lo or got == n
    shards = got // lo
    assert got == 0 or shards * lo <= got <= shards * hi
