"""Publishes Bedrock's `AWS/Bedrock/Batch` CloudWatch metrics (per ModelId) while jobs are in flight.

Like AWS, the metrics are per model and account, not per job: a monitor reading them through the same
endpoint sees records pending and tokens processed per (emulated) minute, and one final datapoint once a
model has nothing left in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from emulator.families import Family
from emulator.jobs import IN_FLIGHT, Job, JobEngine

NAMESPACE = "AWS/Bedrock/Batch"
MIN_PERIOD_REAL_S = 0.2


def _tokens(cumsum: Any, done: int) -> int:
    return int(cumsum[done]) if cumsum is not None else 0


class MetricsPublisher:
    """A background thread: every `metrics_interval_s` (emulated) it puts one datapoint per active model."""

    def __init__(self, engine: JobEngine, cloudwatch: Callable[[], Any]) -> None:
        self._engine = engine
        self._cloudwatch = cloudwatch
        self._stop = threading.Event()
        self._last: dict[str, tuple[int, int]] = {}
        self._active: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="bedrock-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _period(self) -> float:
        profile = self._engine.profile
        return max(MIN_PERIOD_REAL_S, profile.real(profile.metrics_interval_s))

    def _loop(self) -> None:
        client = self._cloudwatch()
        while not self._stop.wait(self._period()):
            try:
                self.publish(client)
            except Exception:  # the endpoint may be shutting down; metrics are best effort
                continue

    def publish(self, client: Any) -> None:
        """One round of datapoints (also callable directly, e.g. from tests)."""
        by_model: dict[str, list[Job]] = {}
        for job in self._engine.jobs():
            by_model.setdefault(job.model_key, []).append(job)
        minutes = max(self._engine.profile.metrics_interval_s, 1e-9) / 60.0
        now = datetime.now(UTC)
        for key, jobs in by_model.items():
            running = [j for j in jobs if j.status in IN_FLIGHT]
            if not running and key not in self._active:
                continue
            pending = sum((j.total or 0) - j.processed() for j in running)
            pending_tokens = sum(
                _tokens(j.in_tok_cumsum, j.limit) - _tokens(j.in_tok_cumsum, j.processed()) for j in running
            )
            tokens_in = sum(_tokens(j.in_tok_cumsum, j.processed()) for j in jobs)
            tokens_out = sum(_tokens(j.out_tok_cumsum, j.processed()) for j in jobs)
            last_in, last_out = self._last.get(
                key, (tokens_in, tokens_out) if key in self._active else (0, 0)
            )
            data = [
                ("NumberOfRecordsPendingProcessing", pending, "Count"),
                ("NumberOfInputTokensProcessedPerMinute", max(0, tokens_in - last_in) / minutes, "Count"),
                ("NumberOfOutputTokensProcessedPerMinute", max(0, tokens_out - last_out) / minutes, "Count"),
            ]
            if any(j.family is Family.CLAUDE for j in jobs):
                data.append(("NumberOfTokensPendingProcessing", pending_tokens, "Count"))
            client.put_metric_data(
                Namespace=NAMESPACE,
                MetricData=[
                    {
                        "MetricName": name,
                        "Dimensions": [{"Name": "ModelId", "Value": key}],
                        "Timestamp": now,
                        "Value": float(value),
                        "Unit": unit,
                    }
                    for name, value, unit in data
                ],
            )
            self._last[key] = (tokens_in, tokens_out)
            if running:
                self._active.add(key)
            else:
                self._active.discard(key)
