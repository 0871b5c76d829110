"""Batch jobs: the store, the per-model in-flight quota, and each job's lifecycle thread.

A job walks Submitted -> Validating -> Scheduled -> InProgress -> Completed / PartiallyCompleted, or ends
Failed / Expired / Stopped, spending the profile's emulated durations (scaled by `time_scale`) in each
state. Waits are `Event.wait`s on the job's stop event, so Stop and reset act at once. Record counters
on Get/List are derived from the clock while a job runs, like Bedrock's progress counters.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from emulator.families import Family, model_key, resolve_family
from emulator.processing import InputInvalid, JobInput, answer, load_input, write_outputs
from emulator.profile import Profile
from emulator.service_model import ApiError, iso
from emulator.storage import ObjectStore
from emulator.workers import Stage, Workers

ACCOUNT_ID = "123456789012"
IN_FLIGHT = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
TERMINAL = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})


def _now() -> datetime:
    """Now, at the millisecond precision the API reports, so time filters agree with returned times."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _matches(name: str, needles: tuple[str, ...]) -> bool:
    return any(needle in name for needle in needles)


@dataclass
class Job:
    arn: str
    job_id: str
    request: dict[str, Any]
    family: Family
    model_key: str
    submit_time: datetime
    status: str = "Submitted"
    message: str | None = None
    last_modified: datetime | None = None
    end_time: datetime | None = None
    total: int | None = None
    # Progress: records done = limit × elapsed / duration while InProgress; `ok_cumsum[k]` = successes in
    # the first k records of the processing order, token cumsums likewise (for metrics).
    run_started: float | None = None
    run_duration: float = 0.0
    limit: int = 0
    processed_final: int | None = None
    ok_cumsum: np.ndarray | None = None
    in_tok_cumsum: np.ndarray | None = None
    out_tok_cumsum: np.ndarray | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    @property
    def name(self) -> str:
        return self.request["jobName"]

    @property
    def model_id(self) -> str:
        return self.request["modelId"]

    def processed(self) -> int:
        if self.processed_final is not None:
            return self.processed_final
        if self.run_started is None:
            return 0
        if self.run_duration <= 0:
            return self.limit
        fraction = min(1.0, (time.monotonic() - self.run_started) / self.run_duration)
        return int(self.limit * fraction)

    def counts(self) -> dict[str, int]:
        if self.total is None:
            return {}
        done = self.processed()
        ok = int(self.ok_cumsum[done]) if self.ok_cumsum is not None else 0
        return {
            "totalRecordCount": self.total,
            "processedRecordCount": done,
            "successRecordCount": ok,
            "errorRecordCount": done - ok,
        }

    def describe(self) -> dict[str, Any]:
        """The job as GetModelInvocationJob / ListModelInvocationJobs return it."""
        r = self.request
        timeout = int(r.get("timeoutDurationInHours") or 24)
        out: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.name,
            "modelId": self.model_id,
            "clientRequestToken": r.get("clientRequestToken"),
            "roleArn": r["roleArn"],
            "status": self.status,
            "message": self.message,
            "submitTime": iso(self.submit_time),
            "lastModifiedTime": iso(self.last_modified or self.submit_time),
            "endTime": iso(self.end_time),
            "inputDataConfig": r["inputDataConfig"],
            "outputDataConfig": r["outputDataConfig"],
            "vpcConfig": r.get("vpcConfig"),
            "timeoutDurationInHours": timeout,
            "jobExpirationTime": iso(self.submit_time + timedelta(hours=timeout)),
            "modelInvocationType": r.get("modelInvocationType") or "InvokeModel",
            **self.counts(),
        }
        return {k: v for k, v in out.items() if v is not None}


class JobEngine:
    """All jobs of the emulated account and region, their quota and their threads."""

    def __init__(self, profile: Profile, store: ObjectStore, region: str = "us-east-1") -> None:
        self.region = region
        self._store = store  # job inputs and outputs (emulator/storage.py)
        self._lock = threading.RLock()
        self._profile = profile
        self._workers = Workers(profile.worker_count())  # processing slots (emulator/workers.py)
        self._jobs: dict[str, Job] = {}
        self._tokens: dict[str, str] = {}
        self._foreign: dict[str, list[float]] = {}
        self._peak: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ profile/state
    @property
    def profile(self) -> Profile:
        return self._profile

    def set_profile(self, profile: Profile) -> None:
        with self._lock:
            self._workers.resize(profile.worker_count())
            self._profile = profile
            self._foreign.clear()

    def reset(self) -> None:
        """Forget every job (their threads exit without writing), foreign jobs and peaks."""
        with self._lock:
            for job in self._jobs.values():
                job.cancelled = True
                job.stop_event.set()
            self._jobs.clear()
            self._tokens.clear()
            self._foreign.clear()
            self._peak.clear()

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    # ------------------------------------------------------------------------------------------- quota
    def _in_flight(self, key: str) -> int:
        return sum(1 for j in self._jobs.values() if j.model_key == key and j.status in IN_FLIGHT)

    def _foreign_active(self, key: str) -> int:
        now = time.monotonic()
        if key not in self._foreign:
            count = self._profile.foreign_for(key)
            self._foreign[key] = [now + self._profile.real(self._profile.foreign_job_duration_s)] * count
        return sum(1 for end in self._foreign[key] if end > now)

    def _note_peak(self, key: str) -> None:
        self._peak[key] = max(self._peak.get(key, 0), self._in_flight(key))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            keys = {j.model_key for j in self._jobs.values()} | set(self._foreign)
            by_status: dict[str, int] = {}
            for job in self._jobs.values():
                by_status[job.status] = by_status.get(job.status, 0) + 1
            return {
                "jobs": len(self._jobs),
                "by_status": by_status,
                **by_status,
                "in_flight": {k: n for k in sorted(keys) if (n := self._in_flight(k))},
                "peak_in_flight": dict(sorted(self._peak.items())),
                "foreign_in_flight": {k: n for k in sorted(keys) if (n := self._foreign_active(k))},
                "quota": self._profile.quota,
                "workers": self._workers.state(),
            }

    # -------------------------------------------------------------------------------------- operations
    def create(self, request: dict[str, Any], family: Family | None = None) -> Job:
        """Register and start a job (the request has passed shape validation; `family` answers for its
        model, as the catalog resolved it)."""
        family = family or resolve_family(request["modelId"], request.get("modelInvocationType"))
        if family is None:
            raise ApiError("ValidationException", "The provided model identifier is invalid.")
        key = model_key(request["modelId"])
        token = request.get("clientRequestToken")
        with self._lock:
            if token and token in self._tokens:
                existing = self._jobs.get(self._tokens[token])
                if existing is not None and existing.name == request["jobName"]:
                    return existing
                raise ApiError(
                    "ConflictException",
                    "The clientRequestToken was already used for a different request. Use a new token.",
                )
            if any(j.name == request["jobName"] for j in self._jobs.values()):
                raise ApiError(
                    "ConflictException",
                    f"A batch inference job with the name {request['jobName']} already exists. "
                    "Use a different job name.",
                )
            if self._in_flight(key) + self._foreign_active(key) >= self._profile.quota:
                raise ApiError(
                    "ServiceQuotaExceededException",
                    f"You have reached the quota of {self._profile.quota} submitted and in-progress batch "
                    f"inference jobs for model {key}. Wait for a job to finish, or request a quota increase.",
                )
            job_id = uuid.uuid4().hex[:12]
            job = Job(
                arn=f"arn:aws:bedrock:{self.region}:{ACCOUNT_ID}:model-invocation-job/{job_id}",
                job_id=job_id,
                request=request,
                family=family,
                model_key=key,
                submit_time=_now(),
            )
            self._jobs[job_id] = job
            if token:
                self._tokens[token] = job_id
            self._note_peak(key)
        threading.Thread(target=self._run, args=(job,), name=f"job-{job_id}", daemon=True).start()
        return job

    def find(self, identifier: str) -> Job:
        job_id = identifier.rsplit("/", 1)[-1]
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (identifier.startswith("arn:") and job.arn != identifier):
            raise ApiError(
                "ResourceNotFoundException", f"The specified batch inference job {identifier} was not found."
            )
        return job

    def stop(self, identifier: str) -> Job:
        job = self.find(identifier)
        with self._lock:
            if job.status in TERMINAL:
                raise ApiError(
                    "ConflictException",
                    f"The batch inference job is in the {job.status} state and can't be stopped.",
                )
            if job.status != "Stopping":
                self._set(job, "Stopping")
                job.stop_event.set()
        return job

    def list(
        self,
        status: str | None = None,
        name_contains: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        descending: bool = True,
    ) -> list[Job]:
        with self._lock:
            jobs = [
                j
                for j in self._jobs.values()
                if (status is None or j.status == status)
                and (name_contains is None or name_contains in j.name)
                and (after is None or j.submit_time > after)
                and (before is None or j.submit_time < before)
            ]
        return sorted(jobs, key=lambda j: (j.submit_time, j.job_id), reverse=descending)

    # --------------------------------------------------------------------------------------- lifecycle
    def _set(self, job: Job, status: str, message: str | None = None) -> None:
        with self._lock:
            if job.cancelled:
                return
            job.status = status
            job.last_modified = _now()
            if message is not None:
                job.message = message
            if status in TERMINAL:
                job.end_time = job.last_modified
                job.processed_final = job.processed() if job.total is not None else None
            self._note_peak(job.model_key)

    def _wait(self, job: Job, emulated_s: float) -> bool:
        """Wait an emulated span; False when the job was stopped or reset meanwhile."""
        return not job.stop_event.wait(self._profile.real(emulated_s))

    def _end_stopped(self, job: Job, job_input: JobInput | None, answers: pl.DataFrame | None) -> None:
        if job.cancelled:
            return
        done = job.processed()
        job.processed_final = done
        if job_input is not None and answers is not None:
            with self._workers.slot(Stage.WRITE):
                write_outputs(self._store, _output_uri(job), job.job_id, job_input, answers, done)
        time.sleep(self._profile.real(self._profile.stop_s))
        self._set(job, "Stopped")

    def _run(self, job: Job) -> None:
        try:
            self._lifecycle(job)
        except Exception as exc:  # an emulator bug must still end the job visibly
            self._set(job, "Failed", f"Internal error in the emulator: {exc!r}")

    def _lifecycle(self, job: Job) -> None:
        p = self._profile
        if not self._wait(job, p.submit_s):
            return self._end_stopped(job, None, None)
        self._set(job, "Validating")
        started = time.monotonic()
        failure: str | None = None
        job_input: JobInput | None = None
        if p.draw("fail", job.name) < p.job_failure_rate or _matches(job.name, p.fail_jobs_matching):
            failure = p.job_failure_message
        else:
            try:
                with self._workers.slot(Stage.READ):
                    job_input = load_input(self._store, _input_uri(job), p, job.family)
                job.total = job_input.total
            except InputInvalid as exc:
                failure = str(exc)
        if not self._wait(
            job, max(0.0, p.validation_s - (time.monotonic() - started) / max(p.time_scale, 1e-12))
        ):
            return self._end_stopped(job, None, None)
        if failure is not None or job_input is None:
            return self._set(job, "Failed", failure)
        self._set(job, "Scheduled")
        timeout_s = 3600.0 * int(job.request.get("timeoutDurationInHours") or 24)
        if p.draw("expire", job.name) < p.expire_rate or _matches(job.name, p.expire_jobs_matching):
            if self._wait(job, min(p.queue_s, timeout_s)):
                self._set(job, "Expired", "The job expired because it did not start before its timeout.")
                return None
            return self._end_stopped(job, None, None)
        if not self._wait(job, min(p.queue_s, timeout_s)):
            return self._end_stopped(job, None, None)
        if p.queue_s >= timeout_s:
            return self._set(job, "Expired", "The job expired because it did not start before its timeout.")
        self._set(job, "InProgress")
        with self._workers.slot(Stage.ANSWER):
            answers = answer(job_input, job.family, job.model_id, job.name, p)
        job_input.release()
        partial = p.draw("partial", job.name) < p.partial_rate or _matches(job.name, p.partial_jobs_matching)
        total = job_input.total
        limit = total
        if partial:
            limit = max(1, min(total - 1, int(total * (0.3 + 0.6 * p.draw("partial-share", job.name)))))
        job.ok_cumsum = np.concatenate([[0], np.cumsum(answers["ok"].to_numpy())])
        job.in_tok_cumsum = np.concatenate([[0], np.cumsum(answers["input_tokens"].to_numpy())])
        job.out_tok_cumsum = np.concatenate([[0], np.cumsum(answers["output_tokens"].to_numpy())])
        job.limit = limit
        job.run_duration = p.real(p.record_s * limit)
        job.run_started = time.monotonic()
        if not self._wait(job, p.record_s * limit):
            return self._end_stopped(job, job_input, answers)
        with self._workers.slot(Stage.WRITE):
            write_outputs(self._store, _output_uri(job), job.job_id, job_input, answers, limit)
        job.processed_final = limit
        if partial:
            return self._set(
                job,
                "PartiallyCompleted",
                f"The job timed out before all records were processed: {limit} of {total} records processed.",
            )
        return self._set(job, "Completed")


def _input_uri(job: Job) -> str:
    return job.request["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]


def _output_uri(job: Job) -> str:
    return job.request["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
