"""Pre-flight (issue 14): a run that cannot work is refused before anything is uploaded or created.

Each case goes through the real flow (in this process, on the session's Prefect API and the emulator) or
the CLI, and checks the same promises: the run ends Failed with one line naming what is wrong and what
to do (the refusal's text is the state message), no object is left in the output bucket, no Bedrock
job or invocation was asked for, and no concurrency limit was created.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.conftest import cli_env, run_cli

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
PAID = ("CreateModelInvocationJob", "InvokeModel", "Converse")
OTHER_REGION = "eu-west-1"


@pytest.fixture
def bucket(local_aws: Any) -> str:
    from tasks.aws import client

    name = f"preflight-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=name)
    return name


@pytest.fixture
def eu_bucket(local_aws: Any) -> str:
    """A bucket in another region than the run's (us-east-1)."""
    from dataclasses import replace

    from tasks.aws import client

    name = f"preflight-eu-{uuid.uuid4().hex[:10]}"
    client("s3", replace(local_aws, region=OTHER_REGION)).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": OTHER_REGION})
    return name


def topics_csv(path: Path, rows: int = 150) -> Path:
    pl.DataFrame({"record_id": [f"r-{i:05d}" for i in range(rows)],
                  "topic": [f"topic number {i}" for i in range(rows)]}).write_csv(path)
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def header_only(path: Path) -> Path:
    path.write_text("record_id,topic\n")
    return path


def params(bucket: str, input_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"model_id": CLAUDE, "input_path": str(input_path), "prompt_id": "joke_about_topic",
            "job_name_prefix": "preflight", "output_uri": f"s3://{bucket}/runs", "role_arn": ROLE,
            "max_records_per_job": 100, "max_concurrent_jobs": 2, "poll_interval_s": 0.2, **overrides}


def limit_names() -> set[tuple[str, int]]:
    """Every global concurrency limit with its size."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {(limit.name, limit.limit) for limit in client.read_global_concurrency_limits(limit=200)}


def keys(bucket: str, aws: Any) -> list[str]:
    from tasks.aws import client

    return [o["Key"] for o in client("s3", aws).list_objects_v2(Bucket=bucket).get("Contents", [])]


@dataclass
class Refused:
    state: Any
    calls: list[dict[str, Any]]
    new_limits: set[str]


def run_refused(emulator: Any, run_params: dict[str, Any]) -> Refused:
    from flows.batch_inference import batch_inference

    limits, before = limit_names(), len(emulator.calls())
    state = batch_inference(**run_params, return_state=True)
    return Refused(state, emulator.calls()[before:], limit_names() - limits)


def assert_refused(run: Refused, fragments: list[str]) -> str:
    """Failed, with one line that is the refusal's text; nothing paid for, no limit created."""
    from tasks.aws.preflight import RunRefused

    assert run.state.is_failed(), run.state
    message = run.state.message
    assert "\n" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    raised = run.state.result(raise_on_failure=False)
    assert isinstance(raised, RunRefused) and str(raised) == message
    assert not [c for c in run.calls if c["operation"] in PAID], run.calls
    assert run.new_limits == set()
    return message


# case -> (write the input, overrides given the fixtures' buckets, fragments of the one line)
CASES: dict[str, tuple[Callable[[Path], Path], Callable[[str, str], dict[str, Any]], list[str]]] = {
    "a typo inside the model id": (
        topics_csv, lambda b, eu: {"model_id": "anthropic.claude-3-haiku-2024037-v1:0"},
        ["model_id 'anthropic.claude-3-haiku-2024037-v1:0' is not a Bedrock model or inference profile in "
         "us-east-1", f"did you mean '{CLAUDE}'"]),
    "a model id without its version suffix": (
        topics_csv, lambda b, eu: {"model_id": "anthropic.claude-3-haiku-20240307-v1"},
        ["'anthropic.claude-3-haiku-20240307-v1' is not a Bedrock model", f"did you mean '{CLAUDE}'"]),
    "an inference profile of another geography": (
        topics_csv, lambda b, eu: {"model_id": "eu.anthropic.claude-3-5-haiku-20241022-v1:0"},
        ["'eu.anthropic.claude-3-5-haiku-20241022-v1:0'", "did you mean 'us.anthropic.claude-3-5-haiku"]),
    "a typo in the model id on a dry run": (
        topics_csv, lambda b, eu: {"model_id": "anthropic.claude-3-haiku-2024037-v1:0", "dry_run": True,
                                   "role_arn": None},
        ["is not a Bedrock model", f"did you mean '{CLAUDE}'"]),
    "no role_arn": (
        topics_csv, lambda b, eu: {"role_arn": None},
        ["role_arn is not set", "--role-arn arn:aws:iam::", "--local"]),
    "a missing bucket": (
        topics_csv, lambda b, eu: {"output_uri": f"s3://{b}-missing/runs"},
        ["-missing' does not exist (output_uri s3://", "aws s3 mb s3://", "--region us-east-1"]),
    "a bucket in another region": (
        topics_csv, lambda b, eu: {"output_uri": f"s3://{eu}/runs"},
        ["output bucket 'preflight-eu-", f"is in {OTHER_REGION}, but the run's region is us-east-1",
         "use a bucket in us-east-1"]),
    "a 0-byte CSV": (
        lambda p: empty_file(p), lambda b, eu: {},
        ["input.csv is empty (0 bytes)", "nothing to run"]),
    "a header-only CSV": (
        header_only, lambda b, eu: {},
        ["input.csv has no rows (only a header line)", "nothing to run"]),
    "max_records_per_job 50": (
        topics_csv, lambda b, eu: {"max_records_per_job": 50},
        ["max_records_per_job 50 is below Bedrock's minimum of 100 records per job (min_records_per_job 100): "
         "raise max_records_per_job to 100 or more"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_that_cannot_work_is_refused_with_one_line_and_leaves_nothing_behind(
    case: str, prefect_api: str, emulator: Any, local_aws: Any, bucket: str, eu_bucket: str, tmp_path: Path,
) -> None:
    from tasks.aws import client

    write, overrides, fragments = CASES[case]
    run_params = params(bucket, write(tmp_path / "input.csv"), **overrides(bucket, eu_bucket))
    limits_before = limit_names()  # other tests of this session may have made the model's limit already
    run = run_refused(emulator, run_params)

    assert_refused(run, fragments)
    assert keys(bucket, local_aws) == [] and keys(eu_bucket, local_aws) == []
    assert limit_names() == limits_before  # none created, none resized
    if case == "a missing bucket":  # not created either
        with pytest.raises(client("s3", local_aws).exceptions.ClientError):
            client("s3", local_aws).head_bucket(Bucket=f"{bucket}-missing")


def test_a_dry_run_needs_no_role_arn_and_checks_the_model(
    prefect_api: str, emulator: Any, local_aws: Any, bucket: str, tmp_path: Path,
) -> None:
    from flows.batch_inference import batch_inference

    before = len(emulator.calls())
    state = batch_inference(**params(bucket, topics_csv(tmp_path / "input.csv", 200), role_arn=None, dry_run=True),
                            return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["dry_run"] is True
    operations = [c["operation"] for c in emulator.calls()[before:]]
    assert "GetFoundationModel" in operations and not set(operations) & set(PAID)
    assert not [k for k in keys(bucket, local_aws) if k.endswith(".write-check")]  # the probe leaves nothing


def test_the_cli_prints_one_line_on_stderr_and_exits_2_and_debug_adds_the_traceback(
    prefect_api: str, emulator: Any, local_aws: Any, bucket: str, tmp_path: Path,
) -> None:
    path = topics_csv(tmp_path / "input.csv")
    args = ["--input-path", str(path), "--prompt-id", "joke_about_topic", "--job-name-prefix", "preflight-cli",
            "--model-id", "anthropic.claude-3-haiku-2024037-v1:0", "--output-uri", f"s3://{bucket}/runs",
            "--role-arn", ROLE, "--output-dir", str(tmp_path / "out")]
    env = cli_env(emulator, prefect_api)
    limits, before = limit_names(), len(emulator.calls())

    done = run_cli(args, env, timeout=180)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "error: model_id 'anthropic.claude-3-haiku-2024037-v1:0' is not a Bedrock model or inference profile in "
        f"us-east-1: did you mean '{CLAUDE}' (or 'us.{CLAUDE}')?"], done.stderr
    assert "results:" not in done.stdout
    debug = run_cli([*args, "--debug"], env, timeout=180)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "RunRefused" in debug.stderr
    assert debug.stderr.splitlines()[-1] == done.stderr.strip()
    assert keys(bucket, local_aws) == []
    assert not [c for c in emulator.calls()[before:] if c["operation"] in PAID]
    assert limit_names() == limits


def test_the_cli_keeps_a_refusal_found_by_prepare_to_one_error_line_without_traceback(
    prefect_api: str, emulator: Any, local_aws: Any, bucket: str, tmp_path: Path,
) -> None:
    path = tmp_path / "input.csv"
    pl.concat([pl.read_csv(topics_csv(path)), pl.read_csv(path).head(2)]).write_csv(path)  # duplicate ids
    args = ["--input-path", str(path), "--prompt-id", "joke_about_topic", "--job-name-prefix", "preflight-dup",
            "--model-id", CLAUDE, "--output-uri", f"s3://{bucket}/runs", "--role-arn", ROLE,
            "--output-dir", str(tmp_path / "out")]
    before = len(emulator.calls())

    done = run_cli(args, cli_env(emulator, prefect_api), timeout=300)

    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "share a record_id" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert done.stderr.splitlines()[-1] == errors[0]
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    assert not [c for c in emulator.calls()[before:] if c["operation"] in PAID]
