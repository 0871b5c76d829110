"""Timing and fault knobs of the emulator, and the seeded draws that decide each job's and record's fate.

A profile is plain JSON so it can travel through flags, an environment variable or an HTTP call. Every fault
is drawn from a hash of (seed, what, job name[, record id]) rather than from a shared RNG stream, so a given
job or record gets the same fate for the same seed whatever else runs concurrently, while the same input
resubmitted under a new name gets a fresh draw (as a retry on AWS would).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILE_ENV = "BEDROCK_EMULATOR_PROFILE"

DEFAULT_FAILURE_MESSAGE = (
    "Amazon Bedrock could not access the input data in Amazon S3. Check that the service role has "
    "s3:GetObject and s3:ListBucket permissions on the input location and that the bucket policy allows it."
)


LIST_KEYS = ("fail_jobs_matching", "expire_jobs_matching", "partial_jobs_matching", "extra_models")


@dataclass(frozen=True)
class Profile:
    """All knobs, with defaults that make a realistic job (hours on AWS) take seconds.

    Durations ending in `_s` are emulated seconds; real seconds = emulated × `time_scale`.
    """

    time_scale: float = 0.0005
    seed: int = 0
    quota: int = 20
    foreign_jobs: int | dict[str, int] = 0
    foreign_job_duration_s: float = 3600.0
    record_error_rate: float = 0.0
    retryable_error_share: float = 0.5
    invalid_output_rate: float = 0.0
    job_failure_rate: float = 0.0
    job_failure_message: str = DEFAULT_FAILURE_MESSAGE
    expire_rate: float = 0.0
    partial_rate: float = 0.0
    throttle_rate: float | dict[str, float] = 0.0
    s3_error_rate: float = 0.0
    submit_s: float = 30.0
    validation_s: float = 300.0
    queue_s: float = 600.0
    record_s: float = 0.5
    stop_s: float = 60.0
    min_records: int = 100
    max_records: int = 50_000
    max_file_bytes: int = 1_000_000_000
    shuffle_output: bool = True
    metrics_interval_s: float = 60.0
    workers: int = 0
    fail_jobs_matching: tuple[str, ...] = field(default=())
    expire_jobs_matching: tuple[str, ...] = field(default=())
    partial_jobs_matching: tuple[str, ...] = field(default=())
    extra_models: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Profile:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown profile keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        for key in LIST_KEYS:
            if isinstance(values.get(key), str):
                values[key] = (values[key],)
            elif key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in LIST_KEYS:
            data[key] = list(data[key])
        return data

    def replace(self, **changes: Any) -> Profile:
        return Profile.from_dict({**self.to_dict(), **changes})

    def worker_count(self) -> int:
        """Jobs whose records are read, answered or written at once (`workers`; 0 = the CPU count)."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def real(self, emulated_seconds: float) -> float:
        """Real seconds for a span of emulated seconds."""
        return max(0.0, emulated_seconds * self.time_scale)

    def throttle_for(self, operation: str) -> float:
        if isinstance(self.throttle_rate, dict):
            return float(self.throttle_rate.get(operation, 0.0))
        return float(self.throttle_rate)

    def foreign_for(self, model_key: str) -> int:
        if isinstance(self.foreign_jobs, dict):
            return int(self.foreign_jobs.get(model_key, 0))
        return int(self.foreign_jobs)

    def draw(self, *key: str) -> float:
        """A uniform [0, 1) number fixed by the seed and `key` (e.g. ("fail", job_name))."""
        digest = hashlib.blake2b("\x1f".join((str(self.seed), *key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64


def load_profile(source: Profile | dict[str, Any] | str | os.PathLike[str] | None = None) -> Profile:
    """A Profile from a Profile, a dict, JSON text or a path.

    None reads BEDROCK_EMULATOR_PROFILE (a path or JSON text), else gives the defaults.
    """
    if source is None:
        source = os.environ.get(PROFILE_ENV) or None
        if source is None:
            return Profile()
    if isinstance(source, Profile):
        return source
    if isinstance(source, dict):
        return Profile.from_dict(source)
    text = str(source).strip()
    if not text.startswith("{"):
        text = Path(text).expanduser().read_text()
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a profile is a JSON object")
    return Profile.from_dict(data)
