"""The "run jobs" step: one `run-job` task per shard, mapped under the model's concurrency limit, and a
`collect-job` task for each as soon as its job ends.

A shard's life: wait for a slot, submit once, watch, release; then collect. The slot is the job's from
submission until its terminal state (Bedrock counts Submitted..Stopping jobs against the quota);
collection is a separate task, so a freed slot goes to the next shard at once. A `Failed` or `Expired`
job is resubmitted under the next attempt's name, up to `max_job_attempts`. Once the flow run is
Cancelling no job is submitted, and a task waiting for a slot or for its job ends Cancelled (the
cancellation hook, `tasks/steps/cancel.py`, stops the jobs and collects what they produced).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.states import Cancelled, State
from prefect.utilities.annotations import unmapped

from tasks.aws import client, jobs, join_s3
from tasks.concurrency import SlotWaitCancelled, ensure_limit, hold_slot, limit_name, reclaim_orphaned_slots
from tasks.core import answers
from tasks.core.collect import ResultPart, collect_shard, mark_failed, result_part_name, write_result_part
from tasks.core.config import RunConfig
from tasks.core.prepare import PreparedRun, PreparedShard
from tasks.core.settings import request_scope, resolve
from tasks.logs import run_logger
from tasks.report import emit_job_event


@dataclass
class JobResult:
    """A shard's job once terminal (or never accepted), before collection."""

    shard: str
    status: str
    job_name: str | None = None
    job_arn: str | None = None
    message: str | None = None
    attempts: int = 0
    submitted: int = 0
    attached: bool = False
    queued_s: float | None = None
    ran_s: float | None = None
    total_s: float | None = None


@dataclass
class ShardOutcome(JobResult):
    """A shard once collected: its job, its rows' counts and its result part (plain data)."""

    records: int = 0
    ok: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    part: ResultPart | None = None
    manifest: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the task only for errors a retry can fix (throttling, 5xx, S3 SlowDown, timeouts)."""
    try:
        state.result()
    except jobs.JobSubmissionError:
        return False
    except Exception as err:
        return jobs.is_transient(err)
    return False


def shard_ledger_uri(run_uri: str, shard: PreparedShard) -> str:
    """One ledger per shard content: `{run}/ledger/shard-0001-<hash>.json`."""
    return join_s3(run_uri, "ledger", f"{shard.stem}.json")


CANCELLED = "cancelled"  # the status of a shard whose run was cancelled before its job ended, and its rows' error_code


def run_job(shard: PreparedShard, cfg: RunConfig, limit: str, run_uri: str,
            progress: Any = None) -> JobResult | State:
    """Drive `shard`'s job to a terminal state while holding one slot of `limit`.

    Returns a Cancelled state (the task run ends Cancelled) when the flow run is cancelled while it
    waits for a slot or for its job; once Cancelling, nothing is submitted.
    """
    try:
        return _run_job(shard, cfg, limit, run_uri, progress)
    except (SlotWaitCancelled, jobs.Cancelled) as err:
        run_logger().info("%s: run cancelled (%s)", shard.name, err)
        return Cancelled(message=f"{shard.name}: {err}")


def _run_job(shard: PreparedShard, cfg: RunConfig, limit: str, run_uri: str, progress: Any) -> JobResult:
    log = run_logger()
    bedrock, s3 = client("bedrock", cfg.aws), client("s3", cfg.aws)
    ledger_uri, output_uri = shard_ledger_uri(run_uri, shard), join_s3(run_uri, "jobs", shard.stem) + "/"
    ctx = TaskRunContext.get()
    task_run_id = ctx.task_run.id if ctx else None

    ledger = jobs.read_ledger(s3, ledger_uri, shard.name)
    if ledger.input_uri is None:  # what a later run needs to collect these jobs without this run's plan
        ledger.content_hash, ledger.input_uri = shard.content_hash, shard.input_uri
        ledger.snapshot_uri, ledger.output_uri = shard.snapshot_uri, output_uri
        jobs.write_ledger(s3, ledger_uri, ledger)
    result = JobResult(shard=shard.name, status="Pending")
    # With reuse_answers off, jobs whose answers were already collected are not attached to again: the
    # attempts start after them (a job still in flight or uncollected is attached to either way).
    base = 0 if cfg.reuse_answers else max((e.attempt for e in ledger.entries if e.harvested), default=0)
    first, last_attempt = base + 1, base + cfg.max_job_attempts
    # A re-run moves past attempts the ledger already saw end in failure.
    for entry in ledger.entries:
        if entry.attempt > base and entry.state == "terminal" and entry.status in ("Failed", "Expired"):
            first = max(first, entry.attempt + 1)
    if first > last_attempt and ledger.latest is not None:
        last = ledger.latest
        return JobResult(shard=shard.name, status=last.status or "Failed", job_name=last.job_name,
                         job_arn=last.job_arn, message=last.message, attempts=last.attempt, attached=True)

    for attempt in range(first, last_attempt + 1):
        identity = jobs.job_identity(cfg.prefix, run_uri_key(cfg, run_uri), shard.name, shard.content_hash, attempt)
        spec = jobs.JobSpec(
            model_id=cfg.model_id, role_arn=cfg.role_arn or "", input_uri=shard.input_uri,
            output_uri=output_uri, timeout_hours=cfg.timeout_hours,
            invocation_type=cfg.invocation_type,
            tags=(("bedrock-batch-flows:run", cfg.key), ("bedrock-batch-flows:shard", shard.name),
                  *cfg.extra_tags),
        )
        timeline: dict[str, float] = {}

        def on_update(job: dict[str, Any], previous: dict[str, Any] | None, name: str = identity.job_name,
                      timeline: dict[str, float] = timeline) -> None:
            status = job["status"]
            if previous is None or previous.get("status") != status:
                log.info("%s %s: %s%s", shard.name, name, status,
                         f" ({job['message']})" if job.get("message") else "")
                timeline.setdefault(status, time.time())
                emit_job_event(job, cfg.key, shard.name)
            if progress is not None:
                progress.job_update(shard.name, job)

        flow_run_id = ctx.task_run.flow_run_id if ctx else None
        stop = cancel_requested(flow_run_id)
        def on_wait(reason: str) -> None:
            log.info("%s waits for a slot: %s", shard.name, reason)
            if progress is not None:
                progress.waiting(shard.name)

        # One slot of the model's limit (shared by every run) and one of this run's own cap.
        with hold_slot(limit, task_run_id=task_run_id, run=str(flow_run_id or cfg.key), cap=cfg.max_concurrent_jobs,
                       lease_s=cfg.lease_s, should_stop=stop, on_wait=on_wait):
            if stop(0.0):  # asked now, not from the cache: a slot taken after Cancelling submits nothing
                raise SlotWaitCancelled(f"cancelled before submitting {identity.job_name}")
            arn, attached = jobs.submit_once(
                bedrock, s3, spec=spec, identity=identity, ledger_uri=ledger_uri, shard=shard.name,
                on_quota_wait=log.warning,
                quota_backoff_s=quota_backoff(cfg), content_hash=shard.content_hash,
            )
            log.info("%s %s job %s (attempt %d)", shard.name, "attached to" if attached else "submitted",
                     identity.job_name, attempt)
            try:
                job = jobs.wait_until_terminal(
                    bedrock, arn, max_interval=cfg.poll_interval_s, min_interval=cfg.min_poll_interval_s,
                    on_update=on_update, should_stop=stop, on_transient=log.warning,
                )
            except jobs.Cancelled:
                # Stopped here, at once: the process may live on for a while after the cancel (the
                # hook, which runs once it is gone, stops again idempotently and collects).
                if cfg.stop_jobs_on_cancel:
                    log.warning("run cancelled: job %s -> %s", arn, jobs.stop_job(bedrock, arn))
                raise
        status = job["status"]
        jobs.mark_terminal(s3, ledger_uri, shard.name, attempt, status, job.get("message"))
        result.job_name, result.job_arn, result.status = identity.job_name, arn, status
        result.message, result.attempts = job.get("message"), attempt
        result.attached = result.attached or attached
        result.submitted += 0 if attached else 1
        result.queued_s, result.ran_s, result.total_s = _durations(job, timeline)
        if status in ("Failed", "Expired") and attempt < last_attempt:
            log.warning("%s job %s ended %s (%s); resubmitting as attempt %d", shard.name, identity.job_name,
                        status, job.get("message") or "no message", attempt + 1)
            continue
        break
    return result


_cancel_checks: dict[str, tuple[float, bool]] = {}
_cancel_lock = threading.Lock()
CANCEL_CHECK_S = 2.0


def cancel_requested(flow_run_id: Any) -> Callable[..., bool]:
    """`should_stop` for a poll loop: True once the flow run is Cancelling (or Cancelled).

    Polling threads would otherwise hold the run's process open until their jobs end, so a cancelled
    run would not exit (nor its hooks stop the jobs) for hours. One API read per `max_age_s` (default
    `CANCEL_CHECK_S`) per flow run, shared by every shard thread of the process; `check(0)` asks now.
    """
    if flow_run_id is None:
        return lambda max_age_s=CANCEL_CHECK_S: False
    key = str(flow_run_id)

    def check(max_age_s: float = CANCEL_CHECK_S) -> bool:
        now = time.monotonic()
        with _cancel_lock:
            last, cancelled = _cancel_checks.get(key, (0.0, False))
            if cancelled or now - last < max_age_s:
                return cancelled
            _cancel_checks[key] = (now, False)
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                state = client.read_flow_run(flow_run_id).state
            cancelled = bool(state and (state.is_cancelling() or state.is_cancelled()))
        except Exception:  # the API unreachable: keep polling the job
            cancelled = False
        with _cancel_lock:
            _cancel_checks[key] = (now, cancelled)
        return cancelled

    return check


def quota_backoff(cfg: RunConfig) -> tuple[float, float]:
    """First and longest wait when other jobs hold the model's quota: no slower than polling would notice
    a freed slot (5 s .. 2 min, both capped by `poll_interval_s`)."""
    return min(5.0, cfg.poll_interval_s), min(120.0, max(cfg.poll_interval_s, 5.0))


def run_uri_key(cfg: RunConfig, run_uri: str) -> str:
    """The key that names jobs: the run's key, or the run's key + repair round for a repair run."""
    suffix = run_uri.rstrip("/").rsplit("/", 1)[-1]
    return cfg.key if suffix == cfg.key else f"{cfg.key}{suffix}"


def collect_job(shard: PreparedShard, job: JobResult, cfg: RunConfig, run_uri: str,
                progress: Any = None, missing_code: str | None = None) -> ShardOutcome:
    """Join the job's outputs back to the shard's input rows; a failed job marks every row.

    `missing_code` is the error of records a collectable job has no output for (default: `missing`, or
    `expired` for an Expired job; the cancellation hook says `cancelled`).
    """
    log = run_logger()
    aws = cfg.aws
    family, _, _ = resolve(cfg)  # with the template's output_schema, if any
    outcome = ShardOutcome(**vars(job), records=shard.records)
    if job.status in jobs.COLLECTABLE and job.job_arn:
        result = collect_shard(
            family=family,
            output_prefix_uri=join_s3(run_uri, "jobs", shard.stem, jobs.job_id_from_arn(job.job_arn)) + "/",
            snapshot_uri=shard.snapshot_uri, input_file_name=shard.input_file_name, aws=aws,
            missing_code=missing_code or ("expired" if job.status == "Expired" else "missing"), job_name=job.job_name,
            scope=request_scope(cfg),
        )
        frame, outcome.manifest, outcome.problems = result.frame, result.manifest, list(result.problems)
        for problem in outcome.problems:
            log.warning("%s: %s", shard.name, problem)
        # Every answer goes to the cache at once: a crash from here on never pays for it again.
        answers.store(cfg.cache_uri, jobs.job_id_from_arn(job.job_arn), result.answers, aws)
        jobs.mark_harvested(client("s3", aws), shard_ledger_uri(run_uri, shard), shard.name, job.job_arn)
    else:
        if job.status == CANCELLED:
            message = job.message or "the run was cancelled before this shard's job ended"
            frame = mark_failed(shard.snapshot_uri, CANCELLED, message, family, aws)
        else:
            code = "expired" if job.status == "Expired" else "job_failed"
            message = f"job {job.job_name} ended {job.status}: {job.message or 'no message'}"
            frame = mark_failed(shard.snapshot_uri, code, message, family, aws)
            log.error("%s: %s after %d attempt(s)", shard.name, message, job.attempts)
    _count(outcome, frame)
    # Written now, not at the end: a shard that is done keeps its output whatever happens later.
    outcome.part = write_result_part(frame, run_uri, result_part_name(shard.index), aws)
    if progress is not None:
        progress.shard_done(outcome)
    return outcome


def _count(outcome: ShardOutcome, frame: pl.DataFrame) -> None:
    stats = frame.select(
        ok=pl.col("error_code").is_null().sum(),
        failed=pl.col("error_code").is_not_null().sum(),
        input_tokens=pl.col("input_tokens").fill_null(0).sum(),
        output_tokens=pl.col("output_tokens").fill_null(0).sum(),
    ).row(0, named=True)
    outcome.ok, outcome.failed = int(stats["ok"]), int(stats["failed"])
    outcome.input_tokens, outcome.output_tokens = int(stats["input_tokens"]), int(stats["output_tokens"])


def _durations(
    job: dict[str, Any], timeline: dict[str, float]
) -> tuple[float | None, float | None, float | None]:
    """(queued, ran, total) seconds; queued/ran only when a poll saw the job InProgress."""
    submit, end = job.get("submitTime"), job.get("endTime")
    if not isinstance(submit, datetime):
        return None, None, None
    submit_ts = submit.timestamp()
    end_ts = end.timestamp() if isinstance(end, datetime) else time.time()
    total = max(0.0, end_ts - submit_ts)
    started = timeline.get("InProgress")
    if started is None:
        return None, None, total
    return max(0.0, started - submit_ts), max(0.0, end_ts - started), total


run_job_task = task(
    run_job,
    name="run-job",
    task_run_name="job-{shard.name}",
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retryable,
    cache_policy=NO_CACHE,
    persist_result=False,
)

collect_job_task = task(
    collect_job,
    name="collect-job",
    task_run_name="collect-{shard.name}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_retryable,
    cache_policy=NO_CACHE,
    persist_result=False,
)


def run_jobs(prepared: PreparedRun, cfg: RunConfig, progress: Any = None) -> list[ShardOutcome]:
    """The step: map one `run-job` task per shard on the flow's task runner; collect each as it ends.

    Every shard's task starts at once and waits for a slot in `hold_slot` (shown as `waiting` in the
    jobs table), so a freed slot is taken within a second. Returns the outcomes in shard order, not
    completion order: repair rounds built from them get the same shards, hence the same job names, on
    every run and on a resume (a job is never submitted twice for them).
    """
    if not prepared.shards:
        return []
    limit = limit_name(cfg.model_id, cfg.aws.region)
    ensure_limit(limit)  # the operator's size; created at the default only when missing
    reclaim_orphaned_slots(limit)
    futures = run_job_task.map(prepared.shards, cfg=unmapped(cfg), limit=unmapped(limit),
                               run_uri=unmapped(prepared.run_uri), progress=unmapped(progress))
    shard_of = dict(zip(futures, prepared.shards, strict=True))
    collecting = []
    for future in as_completed(list(futures)):
        shard = shard_of[future]
        try:
            job = future.result()
        except Exception as err:  # refused for good (validation, access) or cancelled: rows marked, not lost
            cancelled = future.state.is_cancelled()
            job = JobResult(shard=shard.name, status=CANCELLED if cancelled else "Failed",
                            message=future.state.message if cancelled else f"{type(err).__name__}: {err}")
        collecting.append(collect_job_task.submit(shard, job, cfg, prepared.run_uri, progress))
    outcomes = [f.result() for f in collecting]
    order = {shard.name: i for i, shard in enumerate(prepared.shards)}
    return sorted(outcomes, key=lambda o: order[o.shard])
