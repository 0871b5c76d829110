"""A run's watchtower: CloudWatch batch metrics and stuck / expiring jobs, while the jobs run.

Runs beside the shard tasks in one background thread, so the shard tasks stay about one job each.
Every `interval_s` it reads the `AWS/Bedrock/Batch` metrics for the model into the run's log (and,
at the end, a table artifact), and checks the run's in-flight jobs: a job queued too long or close to
its expiry is logged as a warning and emitted as a Prefect event (`bedrock.batch.job.stuck` /
`bedrock.batch.job.expiring`) that an automation can act on. Everything here is best-effort: a
monitoring hiccup never fails the run.
"""

from __future__ import annotations

import contextvars
import threading
from datetime import UTC, datetime
from typing import Any

from tasks.aws import client
from tasks.aws.cloudwatch import read_batch_metrics
from tasks.aws.jobs import IN_FLIGHT
from tasks.core.config import RunConfig
from tasks.core.job_warnings import job_warnings
from tasks.report import emit_job_warning_events

_LABELS = {
    "NumberOfRecordsPendingProcessing": "records pending",
    "NumberOfInputTokensProcessedPerMinute": "input tokens/min",
    "NumberOfOutputTokensProcessedPerMinute": "output tokens/min",
    "NumberOfTokensPendingProcessing": "tokens pending",
}


class RunWatcher:
    def __init__(self, cfg: RunConfig, logger: Any, interval_s: float) -> None:
        self.cfg, self.log, self.interval_s = cfg, logger, max(1.0, interval_s)
        self.history: list[dict[str, Any]] = []
        self.warned: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunWatcher:
        # The thread runs in a copy of the flow's context, so Prefect's run logger and events work there.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="run-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.check()  # one last reading: the figures at the end of the run

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> None:
        try:
            self.read_metrics()
        except Exception as err:
            self.log.debug("CloudWatch metrics not read: %s", err)
        try:
            self.check_jobs()
        except Exception as err:
            self.log.debug("job warnings not checked: %s", err)

    def read_metrics(self) -> dict[str, float | None]:
        values = read_batch_metrics(self.cfg.model_id, self.cfg.aws, minutes=15)
        if any(v is not None for v in values.values()):
            row = {"time": datetime.now(UTC).isoformat(timespec="seconds"),
                   **{_LABELS.get(k, k): v for k, v in values.items()}}
            if not self.history or {k: v for k, v in row.items() if k != "time"} != {
                k: v for k, v in self.history[-1].items() if k != "time"
            }:
                self.history.append(row)
                self.log.info("CloudWatch AWS/Bedrock/Batch %s: %s", self.cfg.model_id, ", ".join(
                    f"{label} {value:,.0f}" for label, value in row.items()
                    if label != "time" and value is not None))
        return values

    def check_jobs(self) -> list[Any]:
        """Warn once per job and kind about queued-too-long and about-to-expire jobs of this run."""
        bedrock = client("bedrock", self.cfg.aws)
        now = datetime.now(UTC)
        fresh = []
        pages = bedrock.get_paginator("list_model_invocation_jobs").paginate(
            nameContains=f"{self.cfg.prefix}-{self.cfg.key[:8]}-")
        for page in pages:
            for job in page.get("invocationJobSummaries", []):
                if job.get("status") not in IN_FLIGHT:
                    continue
                for warning in job_warnings(
                    job, now, queued_warn_after_s=self.cfg.queued_warn_hours * 3600,
                    expiry_warn_within_s=self.cfg.expiry_warn_hours * 3600,
                ):
                    if (warning.job_arn, warning.kind) not in self.warned:
                        self.warned.add((warning.job_arn, warning.kind))
                        fresh.append(warning)
        if fresh:
            emit_job_warning_events(fresh)
        return fresh
