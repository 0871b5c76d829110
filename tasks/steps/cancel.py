"""Cancel means stop: the flow's `on_cancellation` hook.

A worker or runner kills the flow's process when a run is Cancelling and then runs this hook itself, so
the hook cannot rely on anything the process held. From the run's parameters and what the run left on
S3 (`prepared.json`, the ledgers) it stops the jobs still in flight, waits (bounded) for them to end,
collects what every job produced (a Stopped job's outputs hold the records it finished) and writes the
results with every other row marked `cancelled`. Its messages go to the flow run's logs (the UI).
Before the kill, the shard tasks themselves submit nothing more and end Cancelled (`run_jobs`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tasks.aws import client, harvest, jobs
from tasks.core.collect import in_parallel
from tasks.core.config import RunConfig, config_from_params
from tasks.core.prepare import PreparedRun, load_prepared
from tasks.logs import LOGGER_NAME
from tasks.steps.finalize import finalize_run
from tasks.steps.run_jobs import CANCELLED, JobResult, ShardOutcome, collect_job, shard_ledger_uri

STOP_WAIT_S = 900.0  # how long the hook waits for stopped jobs to end (Stopping can take minutes on AWS)


def stop_run_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancellation hook: stop this run's jobs (if `stop_jobs_on_cancel`), collect, give back its slots."""
    log = _run_log(flow, flow_run)
    try:
        cfg = config_from_params(dict(flow_run.parameters))
    except Exception as err:
        log.warning("cannot stop jobs: parameters unreadable (%s)", err)
        return
    if not cfg.stop_jobs_on_cancel:
        log.info("run cancelled; its Bedrock jobs keep running (stop_jobs_on_cancel=false): a re-run with the "
                 "same parameters adopts and collects them")
    elif not cfg.dry_run:
        stopping = stop_in_flight(cfg)
        for arn, status in stopping:
            log.warning("run cancelled: job %s -> %s", arn, status)
        try:
            written = collect_cancelled(cfg, log)
            if written:
                log.warning("run cancelled: %s", written)
        except Exception as err:  # the jobs are stopped either way; a re-run collects what is left
            log.warning("run cancelled: could not write the results of what finished (%s: %s)",
                        type(err).__name__, err)
    # The run's tasks will never release their slots (the runner killed the process): give them back.
    try:
        from tasks.concurrency import limit_name, release_run_slots

        released = release_run_slots(limit_name(cfg.model_id, cfg.aws.region), flow_run.id)
        if released:
            log.warning("run cancelled: released %d concurrency slot(s)", released)
    except Exception as err:  # the lease's expiry (or the next run's reclaim) gives them back later
        log.warning("could not release the run's concurrency slots: %s", err)


def stop_in_flight(cfg: RunConfig) -> list[tuple[str, str]]:
    """Stop every job of this run (main shards and repairs) that its ledgers show as not terminal."""
    s3, bedrock = client("s3", cfg.aws), client("bedrock", cfg.aws)
    return [(entry.job_arn, jobs.stop_job(bedrock, entry.job_arn))
            for _, ledger in harvest.ledgers(s3, cfg.run_uri) for entry in ledger.entries
            if entry.job_arn and entry.state != "terminal"]


def collect_cancelled(cfg: RunConfig, log: Any, wait_s: float = STOP_WAIT_S) -> str | None:
    """Write the cancelled run's results: each shard's job outputs, the rest of its rows `cancelled`."""
    prepared = load_prepared(cfg.run_uri, cfg.aws)
    if prepared is None:  # cancelled before prepare finished: nothing was submitted
        return None
    deadline = time.monotonic() + wait_s
    # Shards at once: each waits for its stopped job and reads its outputs, so waits and round trips overlap.
    outcomes = in_parallel(lambda shard: _collect_shard(shard, prepared, cfg, deadline), prepared.shards)
    summary, _ = finalize_run(outcomes, None, prepared, cfg, elapsed_s=0.0, cancelled=True)
    done = sum(o.ok for o in outcomes)
    return (f"{done:,} row(s) answered before the cancel, {summary.errors_by_code.get(CANCELLED, 0):,} marked "
            f"{CANCELLED}; results in {summary.results_uri}")


def _collect_shard(shard: Any, prepared: PreparedRun, cfg: RunConfig, deadline: float) -> ShardOutcome:
    s3, bedrock = client("s3", cfg.aws), client("bedrock", cfg.aws)
    latest = jobs.read_ledger(s3, shard_ledger_uri(prepared.run_uri, shard), shard.name).latest
    if latest is None or not latest.job_arn:
        job = JobResult(shard=shard.name, status=CANCELLED, message="the run was cancelled before this "
                        "shard's job was submitted")
    else:
        try:
            described = jobs.wait_until_terminal(
                bedrock, latest.job_arn, max_interval=min(cfg.poll_interval_s, 30.0), min_interval=1.0,
                should_stop=lambda: time.monotonic() > deadline)
            status, message = described["status"], described.get("message")
        except jobs.Cancelled:
            status, message = CANCELLED, f"job {latest.job_name} was still stopping when the run was cancelled"
        job = JobResult(shard=shard.name, status=status, job_name=latest.job_name, job_arn=latest.job_arn,
                        message=message, attempts=latest.attempt)
    return collect_job(shard, job, cfg, prepared.run_uri, missing_code=CANCELLED)


def _run_log(flow: Any, flow_run: Any) -> Any:
    """The flow run's logger (its lines reach the run's logs in the UI), or ours outside Prefect."""
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow)
    except Exception:
        return logging.getLogger(LOGGER_NAME)
