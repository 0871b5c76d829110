"""What people see: Prefect artifacts (progress, jobs table, results link, cost) and the terminal summary.

Artifacts are best-effort: a failure to publish one is logged, never fails the run.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from tasks.core.job_warnings import JobWarning
from tasks.logs import run_logger

log = logging.getLogger("bedrock_batch_flows")


def artifact_key(prefix: str, what: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    cleaned = "".join(c if c.isalnum() else "-" for c in f"{prefix}-{what}".lower())
    return "-".join(part for part in cleaned.split("-") if part)[:100]


def _safe(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Publish inside a flow or task run; outside one (unit use) there is nothing to attach it to, and
    asking would start an ephemeral Prefect server."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # artifacts need a Prefect run context; plain calls have none
        log.debug("artifact not published: %s", err)
        return None


class RunProgress:
    """The run as it goes, across shard threads: the progress artifact (records done / total, with jobs by
    status, an ETA from the observed rate and the cost so far in its description), the live jobs table
    (one row per shard, republished under the same key as jobs move), and the log."""

    def __init__(self, total: int, key: str, logger: Any = None, min_interval_s: float = 1.0,
                 jobs_key: str | None = None, model_id: str | None = None, table_interval_s: float = 60.0,
                 status_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(total, 1)
        self.key = key
        self.jobs_key = jobs_key
        self.logger = logger or log
        self._lock = threading.Lock()
        self._processed: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._rows: dict[str, dict[str, Any]] = {}
        self._tokens = [0, 0]
        self._last_publish = self._last_table = -math.inf
        self._moved = False  # a job changed status since the table was last published
        self._min_interval, self._table_interval = min_interval_s, table_interval_s
        self._status_interval = status_interval_s
        self._clock = clock
        self._started = clock()
        self._price = _price(model_id)
        self.artifact_id = _safe(create_progress_artifact, progress=0.0, key=key,
                                 description="Records processed by Bedrock / records in the run")

    @property
    def records_done(self) -> int:
        return sum(self._done.values()) + sum(
            n for shard, n in self._processed.items() if shard not in self._done
        )

    def waiting(self, shard: str) -> None:
        """`shard`'s task waits for a slot of the model's concurrency limit (nothing submitted yet)."""
        with self._lock:
            self._rows.setdefault(shard, {"shard": shard}).update(status="waiting for a slot")
        self._publish(table=True, moved=True)

    def job_update(self, shard: str, job: dict[str, Any]) -> None:
        with self._lock:
            self._processed[shard] = int(job.get("processedRecordCount") or 0)
            row = self._rows.setdefault(shard, {"shard": shard})
            moved = row.get("status") != job.get("status", "")
            row.update({
                "job name": job.get("jobName") or row.get("job name", ""), "status": job.get("status", ""),
                "records": job.get("totalRecordCount") or row.get("records", ""),
                "processed": job.get("processedRecordCount") or 0, "ok": job.get("successRecordCount") or 0,
                "failed": job.get("errorRecordCount") or 0, "message": job.get("message") or "",
                "job ARN": job.get("jobArn") or row.get("job ARN", ""),
            })
        self._publish(table=True, moved=moved)

    def shard_done(self, outcome: Any) -> None:
        with self._lock:
            self._done[outcome.shard] = int(outcome.records)
            self._tokens[0] += int(outcome.input_tokens)
            self._tokens[1] += int(outcome.output_tokens)
            seen = self._rows.get(outcome.shard, {}).get("processed")
            self._rows[outcome.shard] = {**jobs_table([outcome])[0],
                                         "processed": seen or int(outcome.ok) + int(outcome.failed)}
            # Read under the lock: shards ending together each log their own count, not the latest.
            shards_done, records_done, percent = len(self._done), self.records_done, self.percent
        self._publish(table=True, moved=True)
        self.logger.info("progress: %d/%d shards done, %s/%s records (%.1f%%)", shards_done,
                         len(self._expected()), f"{records_done:,}", f"{self.total:,}", percent)

    def expect(self, shards: list[str]) -> None:
        self._shards = list(shards)
        with self._lock:
            for shard in shards:
                self._rows.setdefault(shard, {"shard": shard, "status": "pending"})

    def _expected(self) -> list[str]:
        return getattr(self, "_shards", list(self._done))

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.records_done / self.total)

    def describe(self) -> str:
        """`1,234 / 5,000 records · jobs: 2 InProgress, 1 Completed · ETA 12 min · cost so far $0.0123`"""
        with self._lock:
            statuses: dict[str, int] = {}
            for row in self._rows.values():
                statuses[row.get("status") or "pending"] = statuses.get(row.get("status") or "pending", 0) + 1
            tokens = tuple(self._tokens)
        done, elapsed = self.records_done, self._clock() - self._started
        parts = [f"{done:,} / {self.total:,} records"]
        if statuses:
            parts.append("jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
        if 0 < done < self.total and elapsed > 0:
            parts.append(f"ETA {_fmt_s((self.total - done) * elapsed / done)}")
        if self._price is not None:
            from tasks.core.cost import usd

            cost = usd(tokens[0], self._price.batch_input_per_1k) + usd(tokens[1], self._price.batch_output_per_1k)
            parts.append(f"cost so far {_fmt_cost(cost)} (collected jobs, batch price)")
        return " · ".join(parts)

    def table(self) -> list[dict[str, Any]]:
        """Every row with the same columns in the same order: the UI takes a table's columns from its
        first row, which may be a shard still waiting for a slot."""
        with self._lock:
            return [{column: self._rows[s].get(column, "") for column in LIVE_COLUMNS} for s in sorted(self._rows)]

    def finish(self) -> None:
        with self._lock:
            self._done = {"all": self.total}
            self._processed = {}
        self._publish(force=True)

    def _publish(self, force: bool = False, table: bool = False, moved: bool = False) -> None:
        """Publish the progress and the jobs table, each rate-limited: every publish is an API call, and
        every table publish a new version of the artifact (a 1,000-shard run must not leave one per job and
        status). The progress goes out at most every `min_interval_s`; the table at most every
        `status_interval_s` once a job moved, else every `table_interval_s`. What is held back goes out
        with the first call after its interval (the next poll of any shard); `force` sends the progress now
        (the run's end, whose final table `publish_jobs_table` writes)."""
        now = self._clock()
        with self._lock:
            self._moved |= moved
            send_progress = self.artifact_id is not None and (force or now - self._last_publish >= self._min_interval)
            since = now - self._last_table
            send_table = bool(self.jobs_key) and (
                (self._moved and since >= self._status_interval) or (table and since >= self._table_interval))
            if send_progress:
                self._last_publish = now
            if send_table:
                self._last_table, self._moved = now, False
        if send_progress:
            self._send_progress()
        if send_table:
            self._send_table()

    def _send_progress(self) -> None:
        _safe(update_progress_artifact, artifact_id=self.artifact_id, progress=round(self.percent, 2),
              description=self.describe())

    def _send_table(self) -> None:
        _safe(create_table_artifact, table=self.table(), key=self.jobs_key,
              description=f"Jobs as they run (updated at each poll): {self.describe()}")


def _price(model_id: str | None) -> Any:
    if not model_id:
        return None
    from tasks.core.cost import UnknownModelPrice, lookup_price

    try:
        return lookup_price(model_id)
    except UnknownModelPrice:
        return None


def emit_job_event(job: dict[str, Any], run_key: str, shard: str) -> None:
    """A Prefect event per job state change (`bedrock.batch.job.<status>`, resource: the job's ARN), so
    that automations can act on a failed or stuck job."""

    status = str(job.get("status") or "unknown")
    _safe(emit_event, event=f"bedrock.batch.job.{status.lower()}",
          resource={"prefect.resource.id": f"aws.bedrock.job.{job.get('jobArn')}",
                    "prefect.resource.name": str(job.get("jobName") or ""),
                    "bedrock.model-id": str(job.get("modelId") or ""), "bedrock-batch-flows.run": run_key,
                    "bedrock-batch-flows.shard": shard},
          payload={k: v for k, v in job.items() if isinstance(v, str | int | float) and v is not None})


@dataclass
class RunSummary:
    """The run's outcome as plain data: returned by the flow, printed by the CLI."""

    run_key: str
    run_uri: str
    model_id: str
    total_rows: int = 0
    ok: int = 0
    failed: int = 0
    shards: int = 0
    jobs_submitted: int = 0
    jobs_attached: int = 0
    repaired: int = 0
    on_demand: int = 0
    repair_jobs: int = 0
    cached: int = 0  # rows answered from the answer cache (not sent again)
    cache_saved_usd: float | None = None  # what those rows would have cost at batch price
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    elapsed_s: float = 0.0
    results_uri: str | None = None
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    estimate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LIVE_COLUMNS = ("shard", "status", "job name", "attempts", "records", "processed", "ok", "failed", "input tokens",
                "output tokens", "queued", "ran", "total", "message", "job ARN")


def jobs_table(outcomes: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for o in sorted(outcomes, key=lambda o: o.shard):
        rows.append({
            "shard": o.shard, "job name": o.job_name or "", "status": o.status, "attempts": o.attempts,
            "records": o.records, "ok": o.ok, "failed": o.failed,
            "input tokens": o.input_tokens, "output tokens": o.output_tokens,
            "queued": _fmt_s(o.queued_s), "ran": _fmt_s(o.ran_s), "total": _fmt_s(o.total_s),
            "message": o.message or "", "job ARN": o.job_arn or "",
        })
    return rows


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def publish_jobs_table(outcomes: list[Any], key: str) -> None:
    _safe(create_table_artifact, table=jobs_table(outcomes), key=key,
          description="One row per shard: its Bedrock job, status, records and tokens")


def publish_metrics(history: list[dict[str, Any]], key: str) -> None:
    if history:
        _safe(create_table_artifact, table=history, key=key,
              description="CloudWatch AWS/Bedrock/Batch metrics for the model during the run")


def publish_results(summary: RunSummary, key: str, link: str | None) -> None:
    if link:
        _safe(create_link_artifact, link=link, link_text=summary.results_uri or link, key=key,
              description="The run's output Parquet (input columns + response/embedding + errors)")
    errors = "\n".join(f"| `{code}` | {n:,} |" for code, n in sorted(summary.errors_by_code.items()))
    markdown = (
        f"## Run `{summary.run_key}`\n\n"
        f"| what | value |\n|---|---|\n| model | `{summary.model_id}` |\n| rows | {summary.total_rows:,} |\n"
        f"| ok | {summary.ok:,} |\n| with error | {summary.failed:,} |\n| shards / jobs | {summary.shards} / "
        f"{summary.jobs_submitted} submitted, {summary.jobs_attached} attached, {summary.repair_jobs} repair |\n"
        f"| repaired | {summary.repaired:,} |\n| from the answer cache | {summary.cached:,} rows"
        f"{f', {_fmt_cost(summary.cache_saved_usd)} not paid again' if summary.cached else ''} |\n"
        f"| input / output tokens | {summary.input_tokens:,} / "
        f"{summary.output_tokens:,} |\n| cost (batch price) | {_fmt_cost(summary.cost_usd)} |\n"
        f"| output | `{summary.results_uri}` |\n"
        + (f"\n### Errors by code\n| code | rows |\n|---|---|\n{errors}\n" if errors else "")
    )
    _safe(create_markdown_artifact, markdown=markdown, key=artifact_key(key, "summary"),
          description="Run summary")


def _fmt_cost(cost: float | None) -> str:
    return "n/a" if cost is None else f"${cost:,.4f}"


def summary_text(summary: RunSummary) -> str:
    """A readable table for the terminal (rich renders it; plain text when not a TTY)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bedrock-batch-flows run {summary.run_key}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("model", summary.model_id),
        ("rows", f"{summary.total_rows:,}"),
        ("ok", f"{summary.ok:,}"),
        ("with error", f"{summary.failed:,}" + (
            " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(summary.errors_by_code.items())) + ")"
            if summary.errors_by_code else "")),
        ("shards", str(summary.shards)),
        ("jobs", f"{summary.jobs_submitted} submitted, {summary.jobs_attached} attached, "
                 f"{summary.repair_jobs} repair"),
        ("repaired / on-demand", f"{summary.repaired:,} / {summary.on_demand:,}"),
        ("from the answer cache", f"{summary.cached:,} rows" + (
            f", {_fmt_cost(summary.cache_saved_usd)} not paid again" if summary.cached else "")),
        ("tokens in / out", f"{summary.input_tokens:,} / {summary.output_tokens:,}"),
        ("cost (batch price)", _fmt_cost(summary.cost_usd)),
        ("wall time", _fmt_s(summary.elapsed_s)),
        ("output", summary.results_uri or ""),
    ]
    for failed in summary.failed_jobs:
        rows.append(("failed job", f"{failed.get('job_name')} ({failed.get('shard')}): {failed.get('message')}"))
    for what, value in rows:
        table.add_row(what, value)
    console = Console(width=120, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def emit_job_warning_events(warnings: Iterable[JobWarning]) -> list[Any]:
    """Log each warning and emit it as a Prefect event (automations can page on it).

    Events: `bedrock.batch.job.stuck` / `bedrock.batch.job.expiring` on resource
    `aws.bedrock.job.<jobArn>` (as the job state events); returns what `emit_event` returned (None when events are off).
    """
    logger = run_logger()
    emitted = []
    for warning in warnings:
        logger.warning(warning.message)
        emitted.append(
            emit_event(
                event=warning.event,
                resource={
                    "prefect.resource.id": f"aws.bedrock.job.{warning.job_arn}",
                    "prefect.resource.name": warning.job_name or warning.job_arn,
                    "bedrock.model-id": warning.model_id,
                    "bedrock.status": warning.status,
                },
                payload=asdict(warning),
            )
        )
    return emitted
