"""The repair algorithm: which failed records run again, in what rounds, and how to send them.

Pure over Polars frames; the `repair` step (`tasks/steps/repair.py`) prepares and runs what each round
asks for. A round sends as many records as whole shards can take to batch jobs and the rest (fewer than
the job minimum) on-demand. After `MAX_REPAIR_ROUNDS` batch rounds, one more round runs only when what
is left is under the minimum: it is on-demand, so a last repair job that ended PartiallyCompleted or
Expired does not leave its records in error.
"""

from __future__ import annotations

import polars as pl

from tasks.core.formats import RETRYABLE_ERROR_CODES, ModelFamily, result_schema, results_with_output
from tasks.core.sources import RECORD_ID

MAX_REPAIR_ROUNDS = 2  # rounds that may submit batch jobs (each one a batch wait, hours on AWS)
# Records a repair may run again. `job_failed` is left out: its job already had `max_job_attempts` tries
# and failed for a reason about the job (role, input), not the records; the run fails naming it instead.
REPAIRABLE_ERROR_CODES = RETRYABLE_ERROR_CODES - {"job_failed"}


def needs_repair(error_counts: dict[str, int]) -> bool:
    """Whether a result part (by its error counts) holds any record a repair may fix."""
    return any(code in REPAIRABLE_ERROR_CODES for code in error_counts)


def retryable_rows(frames: list[pl.DataFrame], family: ModelFamily) -> pl.DataFrame:
    """Input rows (result columns dropped) whose error a new attempt may fix."""
    if not frames:
        return pl.DataFrame()
    failed = pl.concat(frames, how="diagonal_relaxed").filter(
        pl.col("error_code").is_in(sorted(REPAIRABLE_ERROR_CODES))
    )
    return failed.drop([c for c in results_with_output(family) if c in failed.columns])


def batchable_records(n: int, min_records: int, max_records: int) -> int:
    """How many of `n` records whole shards of `min_records..max_records` can take (0: too few for a job).

    `n` splits into k shards only if k x min <= n <= k x max; in a gap (1,706 records, 100 per shard) the
    first k x max go to jobs and the rest, fewer than the minimum, on-demand.
    """
    shards = n // min_records
    return min(n, shards * max_records)


def round_chunks(pending: pl.DataFrame, round_no: int, min_records: int,
                 max_records: int) -> list[tuple[str, pl.DataFrame]]:
    """What round `round_no` sends, as (folder suffix, rows) pairs; [] when the repair is over.

    The suffix names the round's folder (`repair-<n><suffix>`): "" for the batch part, "-tail" for the
    records under the minimum that go on-demand beside it.
    """
    if pending.is_empty() or round_no > MAX_REPAIR_ROUNDS + 1:
        return []
    if round_no > MAX_REPAIR_ROUNDS and pending.height >= min_records:
        return []
    in_jobs = batchable_records(pending.height, min_records, max_records)
    chunks = [("", pending.head(in_jobs)), ("-tail", pending.slice(in_jobs))] if in_jobs else [("", pending)]
    return [(suffix, rows) for suffix, rows in chunks if not rows.is_empty()]


def settle_round(done: pl.DataFrame, pending: pl.DataFrame,
                 family: ModelFamily) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A round's results (record id + result columns) and the records still pending after it.

    A repair job that failed as a whole says nothing new about its records: they keep their first error.
    """
    done = done.filter(~pl.col("error_code").is_in(["job_failed"]).fill_null(False))
    results = done.select(RECORD_ID, *result_schema(family))
    still = done.filter(pl.col("error_code").is_in(sorted(REPAIRABLE_ERROR_CODES))).select(RECORD_ID)
    return results, pending.join(still, on=RECORD_ID, how="semi")


def latest_results(rounds: list[pl.DataFrame]) -> pl.DataFrame | None:
    """One row per repaired record, the latest round's answer winning."""
    if not rounds:
        return None
    return pl.concat(rounds, how="vertical_relaxed").unique(RECORD_ID, keep="last", maintain_order=True)
