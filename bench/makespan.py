"""Makespan: the shard plan against fixed slicing and the lower bound, by arithmetic and by simulation.

The emulator's job model (emulator/README.md, default profile) in emulated seconds: a job spends
`submit_s + validation_s + queue_s` (930 s) before it processes records at `record_s` (0.5 s) each, and
holds one of `slots` (20) from submission to its end. So a job of r records lasts 930 + 0.5 r seconds.

Bounds, for N records on S slots:
- `records_bound` = N x record_s / S: no per-job overhead at all (unreachable: every job pays 930 s);
- `lower_bound` = N / (S x per-job rate), the per-job rate being a full job's throughput
  (max_records / (930 + 0.5 x max_records)): what S slots achieve when every job is as large as the
  quota allows, i.e. the fewest jobs and the least overhead any plan can have.

The simulation is an event loop: each freed slot takes the next shard after `refill_delay` seconds.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.core.plan import Quotas, plan_shards

OVERHEAD_S = 30 + 300 + 600  # emulator defaults: submit_s + validation_s + queue_s
RECORD_S = 0.5


@dataclass(frozen=True)
class JobModel:
    overhead_s: float = OVERHEAD_S
    record_s: float = RECORD_S

    def duration(self, records: int) -> float:
        return self.overhead_s + self.record_s * records


def simulate(records: list[int], slots: int, model: JobModel, refill_delay: float = 0.0) -> float:
    """Makespan of running jobs of these sizes in order on `slots` slots, each refill `refill_delay` late."""
    free = [0.0] * slots
    heapq.heapify(free)
    end = 0.0
    for r in records:
        start = heapq.heappop(free)
        start = start + refill_delay if start > 0 else start
        finish = start + model.duration(r)
        end = max(end, finish)
        heapq.heappush(free, finish)
    return end


def fixed_slices(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def compare(
    n: int, record_bytes: int = 2_000, slots: int = 20, max_records: int = 50_000, model: JobModel = JobModel(),
    poll_s: float = 0.0,
) -> dict[str, Any]:
    """Balanced plan (tasks.core.plan) vs fixed `max_records` slicing for n records of `record_bytes` each."""
    plan = plan_shards(np.full(n, record_bytes, dtype=np.int64), Quotas(max_records=max_records, slots=slots))
    balanced = [s.records for s in plan.shards]
    fixed = fixed_slices(n, max_records)
    full_rate = max_records / model.duration(max_records)
    lower = n / (slots * full_rate)
    records_bound = n * model.record_s / slots

    def wave_arithmetic(sizes: list[int]) -> float:
        # Jobs of one wave start together; a wave lasts as long as its largest job.
        return sum(model.duration(max(sizes[i : i + slots])) for i in range(0, len(sizes), slots))

    out: dict[str, Any] = {"rows": n, "slots": slots, "max_records": max_records,
                           "lower_bound_h": lower / 3600, "records_bound_h": records_bound / 3600}
    for name, sizes in (("balanced", balanced), ("fixed", fixed)):
        sim = simulate(sizes, slots, model, poll_s)
        out[name] = {
            "jobs": len(sizes),
            "waves": math.ceil(len(sizes) / slots),
            "records_per_job": [min(sizes), max(sizes)],
            "last_wave_jobs": len(sizes) - (math.ceil(len(sizes) / slots) - 1) * slots,
            "arithmetic_h": wave_arithmetic(sizes) / 3600,
            "simulated_h": sim / 3600,
            "vs_lower_bound": sim / lower,
            "vs_records_bound": sim / records_bound,
        }
    return out
