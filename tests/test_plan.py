"""Shard planning: full waves, every bound obeyed, every row in exactly one shard."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tasks.core.plan import PlanError, Quotas, ShardPlan, plan_shards


def assert_valid(plan: ShardPlan, sizes: np.ndarray, quotas: Quotas, max_records: int | None = None) -> None:
    """The invariants every plan must hold."""
    hi = min(quotas.max_records, max_records or quotas.max_records)
    if plan.on_demand:
        assert plan.shards == () and plan.total_records < quotas.min_records
        return
    assert [s.index for s in plan.shards] == list(range(1, len(plan.shards) + 1))
    assert plan.shards[0].start == 0 and plan.shards[-1].stop == plan.total_records
    for before, after in zip(plan.shards, plan.shards[1:], strict=False):
        assert before.stop == after.start  # contiguous: each row exactly once
    for s in plan.shards:
        assert s.records == s.stop - s.start
        assert quotas.min_records <= s.records <= hi
        assert s.bytes == int(sizes[s.start : s.stop].sum()) <= quotas.max_shard_bytes
    assert plan.total_records + plan.dropped_records == sizes.size
    assert plan.waves == -(-len(plan.shards) // quotas.slots)


def test_reference_scale_gives_three_full_waves() -> None:
    sizes = np.full(2_200_000, 2_000)
    plan = plan_shards(sizes, Quotas())
    assert len(plan.shards) == 60 and plan.waves == 3
    assert {s.records for s in plan.shards} == {36_666, 36_667}
    assert_valid(plan, sizes, Quotas())


def test_fewer_rows_than_the_minimum_go_on_demand() -> None:
    plan = plan_shards(np.full(99, 10), Quotas())
    assert plan.on_demand and plan.shards == () and plan.total_records == 99 and plan.waves == 0


def test_small_inputs_spread_over_the_slots_without_going_under_the_minimum() -> None:
    plan = plan_shards(np.full(530, 10), Quotas())
    assert [s.records for s in plan.shards] == [106] * 5  # 5 jobs of >=100 beat 1 job of 530


def test_a_short_tail_is_never_its_own_shard() -> None:
    # 50,050 rows with one slot: not 50,000 + 50, but two even shards.
    plan = plan_shards(np.full(50_050, 10), Quotas(slots=1))
    assert [s.records for s in plan.shards] == [25_025, 25_025]


def test_byte_limits_are_respected() -> None:
    sizes = np.full(10_000, 1_000)  # 10 MB in all
    quotas = Quotas(max_file_bytes=1_500_000, slots=4)
    plan = plan_shards(sizes, quotas)
    assert len(plan.shards) == 8  # ceil(10 MB / 1.5 MB) = 7 -> next multiple of 4
    assert_valid(plan, sizes, quotas)


def test_skewed_record_sizes_split_by_bytes() -> None:
    sizes = np.concatenate([np.full(1_000, 100_000), np.full(9_000, 100)])  # heavy head
    quotas = Quotas(max_file_bytes=30_000_000, slots=4)
    plan = plan_shards(sizes, quotas)
    assert_valid(plan, sizes, quotas)
    assert len(plan.shards) == 4


def test_max_num_jobs_keeps_the_first_rows() -> None:
    plan = plan_shards(np.full(120_000, 10), Quotas(), max_num_jobs=1)
    assert [(s.start, s.stop) for s in plan.shards] == [(0, 50_000)]
    assert plan.dropped_records == 70_000
    capped = plan_shards(np.full(120_000, 10), Quotas(), max_num_jobs=3)
    assert [s.records for s in capped.shards] == [40_000] * 3 and capped.dropped_records == 0


def test_max_records_per_job_tightens_the_quota() -> None:
    plan = plan_shards(np.full(10_000, 10), Quotas(slots=2), max_records_per_job=1_000)
    assert len(plan.shards) == 10 and max(s.records for s in plan.shards) == 1_000
    with pytest.raises(PlanError, match="minimum"):
        plan_shards(np.full(10_000, 10), Quotas(), max_records_per_job=50)


def test_a_record_larger_than_a_file_is_an_error() -> None:
    with pytest.raises(PlanError, match="position 3"):
        plan_shards(np.array([10, 10, 10, 2_000, 10]), Quotas(min_records=1, max_file_bytes=1_000))


def test_same_input_same_plan_and_series_input() -> None:
    sizes = np.random.default_rng(7).integers(100, 20_000, 30_000)
    assert plan_shards(sizes, Quotas()) == plan_shards(pl.Series(sizes), Quotas())


def test_an_impossible_split_is_an_error_not_a_short_shard() -> None:
    with pytest.raises(PlanError, match="cannot split 4 records"):
        plan_shards(np.ones(4), Quotas(min_records=3, max_records=3))


@st.composite
def planning_inputs(draw: st.DrawFn) -> tuple[np.ndarray, Quotas, int | None, int | None]:
    lo = draw(st.integers(1, 20))
    hi = draw(st.integers(2 * lo, 200))  # below 2*min some counts cannot be split at all (see below)
    n = draw(st.integers(0, 3_000))
    max_size = draw(st.integers(1, 1_000))
    seed = draw(st.integers(0, 2**32 - 1))
    sizes = np.random.default_rng(seed).integers(1, max_size + 1, n)
    # Bytes bind sometimes but never make a plan impossible: room for 2*lo of the largest records.
    max_bytes = draw(st.integers(2 * lo * max_size, 2 * lo * max_size + hi * max_size))
    quotas = Quotas(
        min_records=lo,
        max_records=hi,
        max_file_bytes=max_bytes,
        max_job_bytes=10**12,
        slots=draw(st.integers(1, 25)),
    )
    cap = draw(st.none() | st.integers(1, 30))
    per_job = draw(st.none() | st.integers(2 * lo, hi))
    return sizes, quotas, cap, per_job


@settings(max_examples=300, deadline=None)
@given(planning_inputs())
def test_any_plan_obeys_every_bound_and_covers_each_row_once(
    case: tuple[np.ndarray, Quotas, int | None, int | None],
) -> None:
    sizes, quotas, cap, per_job = case
    plan = plan_shards(sizes, quotas, max_num_jobs=cap, max_records_per_job=per_job)
    assert_valid(plan, sizes, quotas, per_job)
    if cap is not None:
        assert len(plan.shards) <= cap
    assert plan == plan_shards(sizes, quotas, max_num_jobs=cap, max_records_per_job=per_job)


@settings(max_examples=150, deadline=None)
@given(st.integers(100, 400_000), st.integers(1, 30))
def test_uniform_rows_fill_whole_waves_with_sizes_one_apart(n: int, slots: int) -> None:
    quotas = Quotas(slots=slots)
    plan = plan_shards(np.full(n, 1_000), quotas)
    assert_valid(plan, np.full(n, 1_000), quotas)
    counts = [s.records for s in plan.shards]
    assert max(counts) - min(counts) <= 1
    k_min = -(-n // 50_000)
    full_waves = -(-k_min // slots) * slots
    assert len(plan.shards) == (full_waves if full_waves <= n // 100 else n // 100)
    assume(n >= 100)
