"""One run's settings as plain data, its deterministic key, and the reference's input document.

The flow's parameters are validated by Prefect (pydantic) and folded into a `RunConfig`, which every task
receives. The run key hashes what decides the work (source, model, prompt, inference settings, shard
bounds), so a re-run with the same parameters finds the same S3 prefix, ledger and job names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tasks.aws import AwsSettings, credentials_block, join_s3
from tasks.aws.jobs import sanitize_prefix

InvocationType = Literal["InvokeModel", "Converse"]

LOCAL_BUCKET = "bedrock-batch-local"
LOCAL_ROLE_ARN = "arn:aws:iam::123456789012:role/BedrockBatchInferenceRole"

# Keys of the AWS sample's Step Functions execution input that map 1:1 onto our parameters.
EVENT_KEYS = ("s3_uri", "dataset_id", "split", "job_name_prefix", "model_id", "prompt_id", "max_num_jobs",
              "max_records_per_job")


@dataclass(frozen=True)
class RunConfig:
    model_id: str
    job_name_prefix: str = "bedrock-batch"
    # source (exactly one of s3_uri / input_path / dataset_id)
    s3_uri: str | None = None
    input_path: str | None = None
    dataset_id: str | None = None
    split: str = "train"
    record_id_column: str = "record_id"
    # prompt
    prompt_id: str | None = None
    prompt_file: str | None = None
    input_column: str = "input_text"
    # inference
    invocation_type: InvocationType = "InvokeModel"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    system_prompt: str | None = None
    embedding_dimensions: int = 1024
    embedding_normalize: bool = True
    # quotas and scheduling
    max_num_jobs: int | None = None
    max_records_per_job: int = 50_000
    min_records_per_job: int = 100
    max_concurrent_jobs: int = 20
    max_record_bytes: int = 1_000_000
    max_job_attempts: int = 3
    timeout_hours: int = 72
    poll_interval_s: float = 300.0
    min_poll_interval_s: float = 2.0
    lease_s: float = 900.0
    on_demand_concurrency: int = 8
    queued_warn_hours: float = 6.0
    expiry_warn_hours: float = 6.0
    repair_failed: bool = True
    stop_jobs_on_cancel: bool = True
    reuse_answers: bool = True
    # where
    output_uri: str | None = None
    role_arn: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    aws_credentials: Any = None  # a prefect-aws AwsCredentials block; None: boto3's default chain
    # what to do
    dry_run: bool = False
    budget_usd: float | None = None
    extra_tags: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        from tasks.aws.preflight import check_config  # the bounds live with the other pre-flight checks

        check_config(self)  # raises RunRefused (a ValueError) naming the parameter and its bounds

    @property
    def aws(self) -> AwsSettings:
        return AwsSettings.from_env(credentials=self.aws_credentials, region=self.region,
                                    endpoint_url=self.endpoint_url)

    @property
    def prefix(self) -> str:
        """The job-name prefix as Bedrock will accept it (underscores etc. become `-`)."""
        return sanitize_prefix(self.job_name_prefix)

    @property
    def key(self) -> str:
        """12 hex digits naming this run's work; equal parameters give an equal key."""
        decisive = asdict(self)
        for transient in ("dry_run", "budget_usd", "poll_interval_s", "min_poll_interval_s", "lease_s",
                          "max_concurrent_jobs", "on_demand_concurrency", "queued_warn_hours",
                          "expiry_warn_hours", "stop_jobs_on_cancel", "aws_credentials",
                          "endpoint_url", "role_arn", "repair_failed", "timeout_hours", "max_job_attempts",
                          "reuse_answers"):
            decisive.pop(transient)
        blob = json.dumps(decisive, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def output_base(self) -> str:
        """Where runs' folders and the answer cache go: `output_uri`, or the local bucket's prefix folder."""
        return (self.output_uri or join_s3(f"s3://{LOCAL_BUCKET}", self.prefix)).rstrip("/")

    @property
    def run_uri(self) -> str:
        return join_s3(self.output_base, self.key)

    @property
    def cache_uri(self) -> str:
        """The answer cache of this model and invocation type under the output location."""
        from tasks.core.answers import cache_uri

        return cache_uri(self.output_base, self.model_id, self.invocation_type)


def config_from_params(params: dict[str, Any]) -> RunConfig:
    """The flow's parameters (as Prefect validated them) -> RunConfig; the endpoint comes from the
    `aws_credentials` block's client parameters, else from the environment."""
    import os

    values = {k: v for k, v in params.items() if k in RunConfig.__dataclass_fields__}
    values["aws_credentials"] = credentials_block(values.get("aws_credentials"))
    if values["aws_credentials"] is None or not values["aws_credentials"].aws_client_parameters.endpoint_url:
        values.setdefault("endpoint_url", os.environ.get("AWS_ENDPOINT_URL") or None)  # a block's endpoint wins
    if "poll_interval_s" in values:
        values.setdefault("min_poll_interval_s", min(2.0, float(values["poll_interval_s"])))
    return RunConfig(**values)


def from_event(event: dict[str, Any]) -> dict[str, Any]:
    """Map the AWS sample's execution input onto our parameters (unknown keys are refused by name)."""
    known = set(EVENT_KEYS) | {f for f in RunConfig.__dataclass_fields__}
    unknown = sorted(set(event) - known - {"input_type"})
    if unknown:
        raise ValueError(f"unknown keys in the event: {', '.join(unknown)}")
    if event.get("input_type", "text") not in ("text",):
        raise ValueError(f"input_type {event['input_type']!r} is not supported (text only)")
    return {k: v for k, v in event.items() if k != "input_type"}
