"""Bedrock batch jobs: deterministic identity, a durable ledger, submit exactly once, poll, stop.

A job is paid for when Bedrock accepts it, so the dangerous moment is between "Bedrock said yes" and
"we wrote that down". Three layers make a crash there harmless:
1. the job name and `clientRequestToken` derive from the run key, the shard's content and the attempt,
   so a retry of the same call is the same request (Bedrock ignores a repeated token);
2. the ledger on S3 records "submitting" before the call and the ARN after it;
3. a shard whose ledger says "submitting" without an ARN is looked up by name before anything is sent.
A ledger belongs to one shard content (its file is named by the content hash, and it records the hash):
an entry is attached to only when its job name is the one this run would submit, so a re-run whose shard
holds other requests never picks up another shard's job.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from tasks.aws import split_s3_uri

IN_FLIGHT = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
QUEUED = frozenset({"Submitted", "Validating", "Scheduled"})
TERMINAL = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
# Terminal states whose outputs (possibly partial) are worth collecting.
COLLECTABLE = frozenset({"Completed", "PartiallyCompleted", "Expired", "Stopped"})

RETRYABLE_API_ERRORS = frozenset(
    {"ThrottlingException", "InternalServerException", "ServiceUnavailableException", "SlowDown",
     "InternalError", "RequestTimeout", "RequestTimeoutException"}
)

_JOB_NAME_OK = re.compile(r"[^a-zA-Z0-9\-+.]")


class JobSubmissionError(RuntimeError):
    """Bedrock refused a job for a reason retrying will not fix (validation, access)."""


class Cancelled(RuntimeError):
    """The caller asked us to stop waiting (flow cancellation, shutdown)."""


def sanitize_prefix(prefix: str) -> str:
    """Make a user's `job_name_prefix` acceptable to Bedrock's jobName pattern.

    Bedrock allows letters, digits, `-`, `+`, `.` (no `_`, spaces), starting with a letter or digit.
    Underscores and other characters become `-`; the result is never empty.
    """
    cleaned = _JOB_NAME_OK.sub("-", prefix.strip()).strip("-+.")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return cleaned[:24].rstrip("-+.") or "batch"


@dataclass(frozen=True)
class JobIdentity:
    """What makes one submission of one shard unique, and stable across re-runs."""

    job_name: str
    client_request_token: str
    attempt: int


def job_identity(prefix: str, run_key: str, shard_name: str, content_hash: str, attempt: int = 1) -> JobIdentity:
    """Name and request token for `attempt` of a shard (attempts start at 1; a new attempt = new job)."""
    digest = hashlib.sha256(f"{run_key}/{shard_name}/{content_hash}/{attempt}".encode()).hexdigest()
    shard_no = shard_name.rsplit("-", 1)[-1]
    name = f"{sanitize_prefix(prefix)}-{run_key[:8]}-{shard_no}-a{attempt}-{digest[:8]}"
    assert len(name) <= 63, name
    return JobIdentity(job_name=name, client_request_token=f"bbf-{digest[:48]}", attempt=attempt)


def job_id_from_arn(job_arn: str) -> str:
    """Bedrock's jobId (the ARN's last path segment) names the output folder `{out}/{jobId}/`."""
    return job_arn.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------- ledger


@dataclass
class LedgerEntry:
    attempt: int
    job_name: str
    client_request_token: str
    state: str  # "submitting" | "submitted" | "terminal"
    job_arn: str | None = None
    status: str | None = None
    message: str | None = None
    updated: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # True once the job's answers are in the answer cache (nothing more to get from it).
    harvested: bool = False


@dataclass
class Ledger:
    """One shard content's submission history, stored as JSON at `{run}/ledger/{shard stem}.json`.

    It names what the jobs were given (`content_hash`, `input_uri`, `snapshot_uri`) and where they write
    (`output_uri`), so a later run can collect a job it did not submit (`tasks.steps.adopt_earlier_jobs`).
    """

    shard: str
    entries: list[LedgerEntry] = field(default_factory=list)
    content_hash: str | None = None
    input_uri: str | None = None
    snapshot_uri: str | None = None
    output_uri: str | None = None

    @property
    def latest(self) -> LedgerEntry | None:
        return self.entries[-1] if self.entries else None

    def entry(self, attempt: int) -> LedgerEntry | None:
        return next((e for e in self.entries if e.attempt == attempt), None)

    def record(self, entry: LedgerEntry) -> None:
        self.entries = [e for e in self.entries if e.attempt != entry.attempt] + [entry]
        self.entries.sort(key=lambda e: e.attempt)

    def to_json(self) -> str:
        return json.dumps({**{k: v for k, v in asdict(self).items() if k != "entries"},
                           "entries": [asdict(e) for e in self.entries]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        data = json.loads(text)
        known = set(LedgerEntry.__dataclass_fields__)
        entries = [LedgerEntry(**{k: v for k, v in e.items() if k in known}) for e in data.get("entries", [])]
        return cls(shard=data["shard"], entries=entries, content_hash=data.get("content_hash"),
                   input_uri=data.get("input_uri"), snapshot_uri=data.get("snapshot_uri"),
                   output_uri=data.get("output_uri"))


def read_ledger(s3: Any, uri: str, shard: str) -> Ledger:
    bucket, key = split_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return Ledger(shard=shard)
        raise
    return Ledger.from_json(body.decode())


def write_ledger(s3: Any, uri: str, ledger: Ledger) -> None:
    bucket, key = split_s3_uri(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=ledger.to_json().encode(), ContentType="application/json")


# ------------------------------------------------------------------------------------------ submission


@dataclass(frozen=True)
class JobSpec:
    """Everything CreateModelInvocationJob needs, except the identity."""

    model_id: str
    role_arn: str
    input_uri: str
    output_uri: str
    timeout_hours: int = 72
    invocation_type: str = "InvokeModel"
    tags: tuple[tuple[str, str], ...] = ()


def find_job_by_name(bedrock: Any, job_name: str) -> dict[str, Any] | None:
    """The job Bedrock knows under exactly this name, if any (a backstop for a lost ledger write)."""
    paginator = bedrock.get_paginator("list_model_invocation_jobs")
    for page in paginator.paginate(nameContains=job_name):
        for summary in page.get("invocationJobSummaries", []):
            if summary.get("jobName") == job_name:
                return summary
    return None


def error_code(err: BaseException) -> str | None:
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code")
    return None


def is_transient(err: BaseException) -> bool:
    """An error a later try can fix: throttling, 5xx, and the endpoint being unreachable or slow.

    botocore's connection errors (`EndpointConnectionError`, `ReadTimeoutError`...) are not Python's
    `ConnectionError`: they are named here, so an outage never passes for a refusal.
    """
    if error_code(err) in RETRYABLE_API_ERRORS:
        return True
    return isinstance(err, HTTPClientError | BotoConnectionError | ConnectionError | TimeoutError)


def submit_once(
    bedrock: Any,
    s3: Any,
    *,
    spec: JobSpec,
    identity: JobIdentity,
    ledger_uri: str,
    shard: str,
    on_quota_wait: Callable[[str], None] | None = None,
    wait: Callable[[float], None] | None = None,
    quota_backoff_s: tuple[float, float] = (5.0, 120.0),
    content_hash: str | None = None,
) -> tuple[str, bool]:
    """Submit `identity`'s job unless it already exists; return (job ARN, whether it was attached).

    An existing ledger entry is attached to only when it names this very job (`identity.job_name`, which
    derives from the run, the shard's content hash and the attempt) and, when given, the ledger records
    the same `content_hash`; any other entry is a different request set and is never reused.
    `ServiceQuotaExceededException` (other users' jobs fill the model's quota) waits with jittered
    exponential back-off and tries again; validation and access errors raise `JobSubmissionError`.
    """
    wait = wait or time.sleep
    ledger = read_ledger(s3, ledger_uri, shard)
    if content_hash is not None and ledger.content_hash not in (None, content_hash):
        raise JobSubmissionError(
            f"{ledger_uri} records shard content {ledger.content_hash[:12]}, not {content_hash[:12]}: "
            f"refusing to attach to another shard's jobs"
        )
    ledger.content_hash = ledger.content_hash or content_hash
    entry = ledger.entry(identity.attempt)
    if entry is not None and entry.job_name != identity.job_name:
        entry = None  # another job under this attempt number (another run key): never attach to it
    if entry is not None and entry.job_arn:
        return entry.job_arn, True
    if entry is not None and entry.state == "submitting":
        found = find_job_by_name(bedrock, identity.job_name)
        if found is not None:
            _record(s3, ledger_uri, ledger, identity, "submitted", found["jobArn"], found.get("status"))
            return found["jobArn"], True

    _record(s3, ledger_uri, ledger, identity, "submitting")
    delay, max_delay = quota_backoff_s
    while True:
        try:
            response = bedrock.create_model_invocation_job(
                jobName=identity.job_name,
                roleArn=spec.role_arn,
                clientRequestToken=identity.client_request_token,
                modelId=spec.model_id,
                inputDataConfig={"s3InputDataConfig": {"s3Uri": spec.input_uri, "s3InputFormat": "JSONL"}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": spec.output_uri}},
                timeoutDurationInHours=spec.timeout_hours,
                **({"modelInvocationType": spec.invocation_type} if spec.invocation_type != "InvokeModel" else {}),
                **({"tags": [{"key": k, "value": v} for k, v in spec.tags]} if spec.tags else {}),
            )
            arn = response["jobArn"]
            break
        except ClientError as err:
            code = error_code(err)
            if code == "ServiceQuotaExceededException":
                if on_quota_wait:
                    on_quota_wait(f"{identity.job_name}: quota full ({err}); retrying in {delay:.0f}s")
                wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, max_delay)
                continue
            if code == "ConflictException":
                found = find_job_by_name(bedrock, identity.job_name)
                if found is not None:
                    arn = found["jobArn"]
                    break
            if code in RETRYABLE_API_ERRORS:
                raise
            raise JobSubmissionError(f"{identity.job_name}: Bedrock refused the job: {err}") from err
    _record(s3, ledger_uri, ledger, identity, "submitted", arn, "Submitted")
    return arn, False


def _record(
    s3: Any, uri: str, ledger: Ledger, identity: JobIdentity, state: str, arn: str | None = None,
    status: str | None = None, message: str | None = None,
) -> None:
    ledger.record(
        LedgerEntry(
            attempt=identity.attempt, job_name=identity.job_name,
            client_request_token=identity.client_request_token, state=state, job_arn=arn, status=status,
            message=message,
        )
    )
    write_ledger(s3, uri, ledger)


def mark_terminal(s3: Any, uri: str, shard: str, attempt: int, status: str, message: str | None) -> None:
    """Note a job's final state in the ledger, so a re-run knows to move on to the next attempt."""
    ledger = read_ledger(s3, uri, shard)
    entry = ledger.entry(attempt)
    if entry is None:
        return
    entry.state, entry.status, entry.message = "terminal", status, message
    entry.updated = datetime.now(UTC).isoformat()
    write_ledger(s3, uri, ledger)


def mark_harvested(s3: Any, uri: str, shard: str, job_arn: str) -> None:
    """Note that a job's answers are in the answer cache: no later run needs to wait for or read it."""
    ledger = read_ledger(s3, uri, shard)
    for entry in ledger.entries:
        if entry.job_arn == job_arn:
            entry.harvested = True
    write_ledger(s3, uri, ledger)


# ------------------------------------------------------------------------------------------- polling


def next_poll_interval(job: dict[str, Any], previous: float, *, max_interval: float, min_interval: float) -> float:
    """How long to wait before the next GetModelInvocationJob.

    Seconds when the job is about to finish (most records processed, or Stopping), growing towards
    minutes while it queues; never more than `max_interval`, so a freed slot is noticed promptly.
    """
    status = job.get("status")
    total = job.get("totalRecordCount") or 0
    done = job.get("processedRecordCount") or 0
    if status == "Stopping" or (status == "InProgress" and total and done / total >= 0.9):
        interval = min_interval
    elif status in QUEUED:
        interval = previous * 1.5
    else:
        interval = previous * 1.25
    return max(min_interval, min(interval, max_interval))


def wait_until_terminal(
    bedrock: Any,
    job_arn: str,
    *,
    max_interval: float,
    min_interval: float = 1.0,
    on_update: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    step: float = 0.5,
    on_transient: Callable[[str], None] | None = None,
    max_outage_s: float = 3600.0,
) -> dict[str, Any]:
    """Poll a job until it reaches a terminal state; return its last description.

    Sleeps in short steps so cancellation (`should_stop`) and task timeouts act within `step` seconds.
    `on_update(job, previous)` is called on every status change and counter change. A poll that fails
    for a transient reason (throttling, 5xx, the endpoint unreachable) is tried again at the next
    interval, for up to `max_outage_s` in a row: the job runs on whether we can see it or not.
    """
    interval = min_interval
    previous: dict[str, Any] | None = None
    outage_since: float | None = None
    while True:
        try:
            job = bedrock.get_model_invocation_job(jobIdentifier=job_arn)
        except Exception as err:
            if not is_transient(err):
                raise
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > max_outage_s:
                raise
            if on_transient:
                on_transient(f"cannot read job {job_arn} ({type(err).__name__}: {err}); trying again")
            job = {**(previous or {}), "status": (previous or {}).get("status", "Submitted")}
        else:
            outage_since = None
            job.pop("ResponseMetadata", None)
            if on_update and (previous is None or _changed(job, previous)):
                on_update(job, previous)
            if job["status"] in TERMINAL:
                return job
        previous = job
        interval = next_poll_interval(job, interval, max_interval=max_interval, min_interval=min_interval)
        deadline = time.monotonic() + interval
        while (remaining := deadline - time.monotonic()) > 0:
            if should_stop and should_stop():
                raise Cancelled(f"stopped waiting for {job_arn}")
            time.sleep(min(step, remaining))


def _changed(job: dict[str, Any], previous: dict[str, Any]) -> bool:
    keys = ("status", "processedRecordCount", "successRecordCount", "errorRecordCount", "message")
    return any(job.get(k) != previous.get(k) for k in keys)


def stop_job(bedrock: Any, job_arn: str) -> str:
    """Ask Bedrock to stop a job; return what happened ("stopping", or its already terminal status)."""
    try:
        bedrock.stop_model_invocation_job(jobIdentifier=job_arn)
        return "stopping"
    except ClientError as err:
        if error_code(err) in ("ValidationException", "ConflictException"):
            job = bedrock.get_model_invocation_job(jobIdentifier=job_arn)
            return str(job["status"])
        raise
