"""Shard planning: cut the prepared rows into contiguous shards that fill the job slots evenly.

Bedrock bounds every job (min/max records, max file and job bytes) and the account bounds how many jobs
run at once (`slots`). Fixed-size chunks waste both: 2.2M rows in 50k chunks is 44 jobs, and the third
wave of 20 slots runs 4 jobs while 16 slots idle. The plan instead picks the smallest multiple of
`slots` that satisfies every bound (60 shards of ~36.7k: three full waves) and splits the rows evenly
by count, checking bytes with a cumulative sum (`np.searchsorted` finds byte-limited cut points).
Pure function of (record sizes, quotas, caps): the same input always gives the same shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl


class PlanError(ValueError):
    """No plan satisfies the quotas (e.g. a single record larger than the file limit)."""


@dataclass(frozen=True)
class Quotas:
    """Per-job limits and the number of concurrent job slots (Bedrock defaults; all overridable)."""

    min_records: int = 100
    max_records: int = 50_000
    max_file_bytes: int = 1_000_000_000
    max_job_bytes: int = 5_000_000_000
    slots: int = 20

    def __post_init__(self) -> None:
        if min(self.min_records, self.max_records, self.max_file_bytes, self.max_job_bytes, self.slots) < 1:
            raise ValueError(f"quotas must be positive: {self}")
        if self.min_records > self.max_records:
            raise ValueError(f"min_records {self.min_records} exceeds max_records {self.max_records}")

    @property
    def max_shard_bytes(self) -> int:
        # One input file per job, so a shard is bounded by both the file and the job limit.
        return min(self.max_file_bytes, self.max_job_bytes)


@dataclass(frozen=True)
class ShardSpec:
    """Rows `[start, stop)` of the prepared order; `index` is 1-based (`shard-0001`)."""

    index: int
    start: int
    stop: int
    records: int
    bytes: int


@dataclass(frozen=True)
class ShardPlan:
    """The shards, or `on_demand=True` (no shards) when the rows are too few for one batch job.

    `total_records` counts the rows the run covers (in shards or on demand); `dropped_records` counts
    rows left out because `max_num_jobs` capped the work: the plan always keeps the *first* rows.
    """

    shards: tuple[ShardSpec, ...]
    on_demand: bool
    total_records: int
    waves: int
    total_bytes: int = 0
    dropped_records: int = 0
    slots: int = 20
    reason: str = field(default="", compare=False)


def _stops_ok(stops: np.ndarray, cum: np.ndarray, lo: int, hi: int, max_bytes: int) -> bool:
    starts = np.concatenate(([0], stops[:-1]))
    sizes = stops - starts
    if sizes.size == 0 or sizes.min() < lo or sizes.max() > hi:
        return False
    return bool((cum[stops] - cum[starts]).max() <= max_bytes)


def _by_count(n: int, k: int) -> np.ndarray:
    """k cut points giving sizes that differ by at most one."""
    return (np.arange(1, k + 1, dtype=np.int64) * n) // k


def _by_bytes(cum: np.ndarray, k: int) -> np.ndarray:
    """k cut points giving (nearly) equal bytes, for inputs whose record sizes vary a lot."""
    n = cum.size - 1
    targets = cum[-1] * np.arange(1, k, dtype=np.float64) / k
    cuts = np.searchsorted(cum, targets, side="left").astype(np.int64)
    cuts = np.clip(cuts, 1, n)
    return np.concatenate((cuts, [n]))


def _reach(cum: np.ndarray, start: int, max_records: int, max_bytes: int) -> int:
    """The farthest stop a shard starting at `start` may have."""
    n = cum.size - 1
    by_bytes = int(np.searchsorted(cum, cum[start] + max_bytes, side="right")) - 1
    return min(start + max_records, n, by_bytes)


def _greedy(cum: np.ndarray, n: int, max_records: int, max_bytes: int, limit: int | None = None) -> list[int]:
    """Fullest-first cut points over rows [0, n), at most `limit` shards: the fewest shards possible."""
    stops: list[int] = []
    start = 0
    while start < n and (limit is None or len(stops) < limit):
        stop = min(_reach(cum, start, max_records, max_bytes), n)
        stops.append(stop)
        start = stop
    return stops


def plan_shards(
    record_bytes: np.ndarray | pl.Series | list[int],
    quotas: Quotas = Quotas(),
    max_num_jobs: int | None = None,
    max_records_per_job: int | None = None,
) -> ShardPlan:
    """Plan contiguous shards over records of the given sizes (bytes of each JSONL line incl. newline).

    Guarantees (or raises `PlanError`): every shard has `min_records..max_records` records and at most
    `max_shard_bytes` bytes; shards cover rows `0..total_records` exactly once, in order; the shard
    count is the smallest multiple of `slots` within the bounds when one exists (else as close to a
    full wave as the minimum allows), and sizes differ by at most one record when bytes allow.
    """
    sizes = np.asarray(record_bytes.to_numpy() if isinstance(record_bytes, pl.Series) else record_bytes)
    sizes = sizes.astype(np.int64, copy=False).reshape(-1)
    n_all = int(sizes.size)
    lo = quotas.min_records
    hi = quotas.max_records if max_records_per_job is None else min(quotas.max_records, max_records_per_job)
    if hi < lo:
        raise PlanError(f"max_records_per_job {hi:,} is below min_records_per_job {lo:,} (Bedrock's minimum is "
                        f"100 records per job): raise max_records_per_job")
    if max_num_jobs is not None and max_num_jobs < 1:
        raise PlanError(f"max_num_jobs must be at least 1, not {max_num_jobs}")
    max_bytes = quotas.max_shard_bytes
    if n_all and sizes.max() > max_bytes:
        row = int(np.argmax(sizes > max_bytes))
        raise PlanError(
            f"record at position {row} is {int(sizes[row]):,} bytes, above Bedrock's {max_bytes:,}-byte input "
            f"file limit: shorten it, or lower max_record_bytes to refuse such records by name"
        )
    cum = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))

    n = n_all
    if max_num_jobs is not None:  # cap the work: keep the first rows that fit in max_num_jobs full shards
        stops = _greedy(cum, n_all, hi, max_bytes, limit=max_num_jobs)
        n = stops[-1] if stops else 0
    dropped = n_all - n
    common = {"total_bytes": int(cum[n]), "dropped_records": dropped, "slots": quotas.slots}

    if n < lo:
        return ShardPlan(
            (),
            True,
            n,
            0,
            **common,
            reason=f"{n} records is below the {lo}-record job minimum: run on demand",
        )

    k_lo = max(math.ceil(n / hi), math.ceil(int(cum[n]) / max_bytes), 1)
    k_hi = n // lo
    if max_num_jobs is not None:
        k_hi = min(k_hi, max_num_jobs)
    stops_found: np.ndarray | None = None
    how = ""
    if k_lo <= k_hi:
        slots = quotas.slots
        target = min(math.ceil(k_lo / slots) * slots, k_hi)
        candidates = [target, *range(target + slots, k_hi + 1, slots)]
        candidates += [k for k in range(k_lo, k_hi + 1) if k % slots and k != target][:2000]
        for k in candidates:
            for split in (_by_count(n, k), _by_bytes(cum[: n + 1], k)):
                if _stops_ok(split, cum, lo, hi, max_bytes):
                    stops_found, how = split, "balanced"
                    break
            if stops_found is not None:
                break
    if stops_found is None:
        stops_found, how = _greedy_with_tail(cum, n, lo, hi, max_bytes), "packed"
    k = len(stops_found)
    starts = np.concatenate(([0], stops_found[:-1]))
    shard_bytes = cum[stops_found] - cum[starts]
    shards = tuple(
        ShardSpec(index=i + 1, start=int(a), stop=int(b), records=int(b - a), bytes=int(nb))
        for i, (a, b, nb) in enumerate(zip(starts, stops_found, shard_bytes, strict=True))
    )
    waves = math.ceil(k / quotas.slots)
    counts = sorted({s.records for s in shards})
    reason = (
        f"{k} shard(s) of {counts[0]:,}-{counts[-1]:,} records ({how}) "
        f"in {waves} wave(s) of {quotas.slots} slots"
        + (f"; {dropped:,} rows beyond max_num_jobs={max_num_jobs} left out" if dropped else "")
    )
    return ShardPlan(shards, False, n, waves, **common, reason=reason)


def _greedy_with_tail(cum: np.ndarray, n: int, lo: int, hi: int, max_bytes: int) -> np.ndarray:
    """Fallback when no even split fits the bytes: pack greedily, then rebalance a short last shard."""
    stops = _greedy(cum, n, hi, max_bytes)
    if len(stops) >= 2 and stops[-1] - stops[-2] < lo:
        a = stops[-3] if len(stops) >= 3 else 0
        span = n - a
        for mid in (a + span // 2, int(np.searchsorted(cum, (cum[a] + cum[n]) / 2, side="left"))):
            pair = np.array([mid, n], dtype=np.int64)
            shifted = pair - a
            if _stops_ok(shifted, cum[a:] - cum[a], lo, hi, max_bytes):
                stops[-2] = mid
                break
    result = np.asarray(stops, dtype=np.int64)
    if not _stops_ok(result, cum, lo, hi, max_bytes):
        raise PlanError(
            f"cannot split {n} records into shards of {lo}-{hi} records and at most {max_bytes} bytes; "
            f"raise max_records_per_job or lower min_records_per_job"
        )
    return result
