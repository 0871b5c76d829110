"""The repair step: run again the records that failed for a retryable reason (`tasks/core/repair.py` says
which, in what rounds, batch or on-demand); each round's jobs run through the same mapped `run_jobs`."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws import join_s3
from tasks.core import repair as algorithm
from tasks.core.collect import read_snapshots
from tasks.core.config import RunConfig
from tasks.core.prepare import PreparedRun, prepare_run
from tasks.core.settings import quotas, resolve
from tasks.logs import run_logger
from tasks.steps.finalize import serve_on_demand
from tasks.steps.run_jobs import ShardOutcome, run_jobs


@task(name="repair", cache_policy=NO_CACHE, persist_result=False)
def repair(outcomes: list[ShardOutcome], prepared: PreparedRun, cfg: RunConfig) -> tuple[pl.DataFrame | None, int]:
    """Retry records that failed for a retryable reason: as repair jobs, or on-demand when too few.

    Returns the repair results (record_id + result columns, one row per repaired record, latest round
    wins), which `finalize` lays over the shards' parts, and the number of repair jobs run.
    """
    log = run_logger()
    family, template, settings = resolve(cfg)
    parts = [o.part for o in outcomes if o.part is not None and algorithm.needs_repair(o.part.error_counts)]
    pending = algorithm.retryable_rows(read_snapshots([p.uri for p in parts], cfg.aws), family)
    rounds: list[pl.DataFrame] = []
    repair_jobs = 0
    round_no = 1
    while chunks := algorithm.round_chunks(pending, round_no, cfg.min_records_per_job, cfg.max_records_per_job):
        log.info("repair round %d: %s record(s) with retryable errors", round_no, f"{pending.height:,}")
        done: list[pl.DataFrame] = []
        for suffix, rows in chunks:
            rep = prepare_run(
                rows.lazy(), family=family, settings=settings, template=template,
                run_uri=join_s3(cfg.run_uri, f"repair-{round_no}{suffix}"), aws=cfg.aws, quotas=quotas(cfg),
                input_column=cfg.input_column, max_record_bytes=cfg.max_record_bytes, model_id=cfg.model_id,
                invocation_type=cfg.invocation_type,
            )
            if rep.plan.on_demand:
                done.append(serve_on_demand(rep, cfg))
            else:
                rep_outcomes = run_jobs(rep, cfg)
                repair_jobs += sum(o.submitted + (1 if o.attached else 0) for o in rep_outcomes)
                done += read_snapshots([o.part.uri for o in rep_outcomes if o.part], cfg.aws)
        results, pending = algorithm.settle_round(pl.concat(done, how="diagonal_relaxed"), pending, family)
        rounds.append(results)
        round_no += 1
    return algorithm.latest_results(rounds), repair_jobs

