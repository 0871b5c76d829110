"""Helpers for the emulator's own tests: plain boto3 clients on the session emulator, input files, polling."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

ROLE = "arn:aws:iam::123456789012:role/bedrock-batch"
CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}


def claude_record(i: int, text: str | None = None, max_tokens: int = 200) -> dict[str, Any]:
    return {
        "recordId": f"rec-{i:05d}",
        "modelInput": {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text or f"prompt {i}"}]}],
        },
    }


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        pause.wait(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def clients(emulator) -> dict[str, Any]:
    """Plain boto3 clients pointed at the emulator; no retries, so every error surfaces."""
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    kwargs = dict(
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )
    return {name: boto3.client(name, **kwargs) for name in ("bedrock", "bedrock-runtime", "s3", "cloudwatch")}


@pytest.fixture
def bedrock(clients):
    return clients["bedrock"]


@pytest.fixture
def runtime(clients):
    return clients["bedrock-runtime"]


@pytest.fixture
def s3(clients):
    return clients["s3"]


@pytest.fixture
def bucket(s3) -> str:
    name = f"emu-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def knobs(emulator) -> Iterator[Callable[..., None]]:
    """Change profile keys for one test; the session profile comes back afterwards."""
    base = emulator.profile

    def apply(**changes: Any) -> None:
        emulator.set_profile(base.replace(**changes))

    yield apply
    emulator.set_profile(base)


@pytest.fixture
def put_jsonl(s3, bucket) -> Callable[..., str]:
    """Upload records (dicts or raw lines) as JSONL; returns the s3:// URI."""

    def put(records: list[Any], key: str = "input/shard-0001.jsonl") -> str:
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        return f"s3://{bucket}/{key}"

    return put


@pytest.fixture
def submit(bedrock, bucket) -> Callable[..., str]:
    """CreateModelInvocationJob with sensible defaults; returns the job ARN."""

    def create(input_uri: str, model_id: str = CLAUDE, name: str | None = None, **extra: Any) -> str:
        return bedrock.create_model_invocation_job(
            jobName=name or f"job-{uuid.uuid4().hex[:10]}",
            roleArn=ROLE,
            modelId=model_id,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/output/"}},
            **extra,
        )["jobArn"]

    return create


@pytest.fixture
def finish(bedrock) -> Callable[..., dict[str, Any]]:
    """Poll GetModelInvocationJob until the job is terminal; returns the last response."""

    def wait(job_arn: str, timeout: float = 15.0) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            job = bedrock.get_model_invocation_job(jobIdentifier=job_arn)
            return job if job["status"] in TERMINAL else None

        return wait_for(terminal, timeout, f"{job_arn} to end")

    return wait


@pytest.fixture
def outputs(s3, bucket) -> Callable[[str, str], list[dict[str, Any]]]:
    """The parsed `.jsonl.out` records of a job's input file."""

    def read(job_arn: str, file_name: str = "shard-0001.jsonl") -> list[dict[str, Any]]:
        job_id = job_arn.rsplit("/", 1)[-1]
        body = s3.get_object(Bucket=bucket, Key=f"output/{job_id}/{file_name}.out")["Body"].read()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    return read


@pytest.fixture
def manifest(s3, bucket) -> Callable[[str], dict[str, Any]]:
    def read(job_arn: str) -> dict[str, Any]:
        job_id = job_arn.rsplit("/", 1)[-1]
        return json.loads(
            s3.get_object(Bucket=bucket, Key=f"output/{job_id}/manifest.json.out")["Body"].read()
        )

    return read
