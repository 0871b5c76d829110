"""Jobs an operator should look at: queued too long, or about to expire.

Per-job state comes from GetModelInvocationJob; `job_warnings` turns one such response into warnings
that the run's watcher logs and emits as Prefect events (`tasks.report.emit_job_warning_events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

QUEUED_STATUSES = frozenset({"Submitted", "Validating", "Scheduled"})
# A job that can still run out of time (Stopping ends on its own).
EXPIRABLE_STATUSES = QUEUED_STATUSES | {"InProgress"}
DEFAULT_QUEUED_WARN_AFTER_S = 6 * 3600
DEFAULT_EXPIRY_WARN_WITHIN_S = 6 * 3600

WarningKind = Literal["stuck", "expiring"]


@dataclass(frozen=True)
class JobWarning:
    """One thing an operator should look at: a job queued too long, or one about to time out."""

    kind: WarningKind
    job_arn: str
    job_name: str
    model_id: str
    status: str
    seconds: float  # stuck: time since submit; expiring: time left before jobExpirationTime
    message: str

    @property
    def event(self) -> str:
        return f"bedrock.batch.job.{self.kind}"


def _as_datetime(value: Any) -> datetime | None:
    """boto3 gives aware datetimes; JSON round-trips give ISO strings. Naive means UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def job_warnings(
    job: dict[str, Any],
    now: datetime,
    *,
    queued_warn_after_s: float = DEFAULT_QUEUED_WARN_AFTER_S,
    expiry_warn_within_s: float = DEFAULT_EXPIRY_WARN_WITHIN_S,
) -> list[JobWarning]:
    """Warnings for one GetModelInvocationJob response at time `now`.

    - stuck: still Submitted/Validating/Scheduled `queued_warn_after_s` after `submitTime` (capacity
      is short; the job holds a quota slot while doing nothing).
    - expiring: not finished and `jobExpirationTime` is less than `expiry_warn_within_s` away (a queued
      job will end `Expired`, a running one `PartiallyCompleted`).
    Terminal jobs never warn.
    """
    now = _as_datetime(now) or datetime.now(UTC)
    status = job.get("status", "")
    arn = job.get("jobArn", "")
    name = job.get("jobName", "")
    common = {"job_arn": arn, "job_name": name, "model_id": job.get("modelId", ""), "status": status}
    found: list[JobWarning] = []

    submitted = _as_datetime(job.get("submitTime"))
    if status in QUEUED_STATUSES and submitted is not None:
        waited = (now - submitted).total_seconds()
        if waited >= queued_warn_after_s:
            found.append(
                JobWarning(
                    kind="stuck",
                    seconds=waited,
                    message=f"job {name or arn} still {status} {_hours(waited)} after submission",
                    **common,
                )
            )

    expires = _as_datetime(job.get("jobExpirationTime"))
    if status in EXPIRABLE_STATUSES and expires is not None:
        left = (expires - now).total_seconds()
        if left <= expiry_warn_within_s:
            outcome = "Expired" if status in QUEUED_STATUSES else "PartiallyCompleted"
            when = f"in {_hours(left)}" if left > 0 else f"{_hours(-left)} ago"
            found.append(
                JobWarning(
                    kind="expiring",
                    seconds=left,
                    message=(
                        f"job {name or arn} ({status}) reaches its expiration time {when}: "
                        f"it will end {outcome}"
                    ),
                    **common,
                )
            )
    return found
