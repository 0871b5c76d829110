"""AWS the Prefect way: a prefect-aws `AwsCredentials` block drives every AWS client of a run.

A block saved with the emulator's endpoint (its `aws_client_parameters.endpoint_url`), keys and region
is named with `--aws-credentials` in a CLI run whose environment has no AWS settings at all: no
`AWS_ENDPOINT_URL`, no keys, no profile, no config files. Every boto3 client and Polars' S3 access
(staging, collecting, the CLI's local copy of the results) go through the block, or the run could not
reach the emulator (nor find credentials).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
TOPICS = REPO / "samples" / "topics.csv"


@pytest.fixture
def emulator_block(prefect_api: str, emulator: Any) -> Iterator[str]:
    """An AwsCredentials block for the emulator, saved as an operator would; its name."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    name = f"bbf-emulator-{uuid.uuid4().hex[:8]}"
    block_id = AwsCredentials(
        aws_access_key_id="block-key", aws_secret_access_key="block-secret", region_name=emulator.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=emulator.url),
    ).save(name)
    yield name
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_block_document(block_id)


def _no_aws_env(prefect_api: str, tmp_path: Path) -> dict[str, str]:
    """This process's environment without any AWS setting (and no AWS files to fall back on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PREFECT_API_URL=prefect_api, AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"), AWS_EC2_METADATA_DISABLED="true")
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
    return env


def test_a_saved_aws_credentials_block_drives_a_run_with_no_aws_environment(
    emulator_block: str, emulator: Any, prefect_api: str, tmp_path: Path,
) -> None:
    from prefect_aws import AwsCredentials

    from tasks.aws import AwsSettings, client

    block = AwsCredentials.load(emulator_block)
    aws = AwsSettings.from_env(credentials=block)
    assert aws.endpoint_url == emulator.url and aws.region == emulator.region
    bucket = f"block-{uuid.uuid4().hex[:10]}"
    client("s3", aws).create_bucket(Bucket=bucket)
    before = len(emulator.calls())

    env = _no_aws_env(prefect_api, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "flows.batch_inference", "--aws-credentials", emulator_block,
         "--input-path", str(TOPICS), "--prompt-id", "joke_about_topic", "--model-id", CLAUDE,
         "--job-name-prefix", "block", "--output-uri", f"s3://{bucket}/out", "--role-arn", ROLE,
         "--poll-interval-s", "0.5", "--output-dir", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # Bedrock (the emulator) took the run's jobs, signed with the block's keys.
    created = [c for c in emulator.calls()[before:] if c["operation"] == "CreateModelInvocationJob"]
    assert created and all(c.get("status_code") == 200 for c in created), created
    # The CLI's local copy of the results came from the emulator's S3 through the block too.
    results = done.stdout.strip().splitlines()[-1]
    assert results.startswith("results: "), done.stdout[-2000:]
    out = pl.read_parquet(results.removeprefix("results: "))
    rows = pl.read_csv(TOPICS).height
    assert out.height == rows and out["response"].null_count() == 0

    # The flow run keeps a reference to the block, not its secret; the run's hooks (cancel) resolve it.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.core.config import config_from_params

    flow_run_name = (done.stdout + done.stderr).split("Beginning flow run '", 1)[1].split("'", 1)[0]
    with get_client(sync_client=True) as prefect:
        [flow_run] = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=[flow_run_name])), sort=FlowRunSort.START_TIME_DESC, limit=1)
    stored = flow_run.parameters["aws_credentials"]
    assert stored == {"$ref": {"block_document_slug": f"aws-credentials/{emulator_block}"}}, stored
    assert "block-secret" not in json.dumps(flow_run.parameters, default=str)
    assert config_from_params(dict(flow_run.parameters)).aws.endpoint_url == emulator.url


def test_the_monitoring_cli_takes_the_same_block(
    emulator_block: str, emulator: Any, prefect_api: str, tmp_path: Path,
) -> None:
    """`python -m tasks.monitoring --aws-credentials NAME`: alarms created on the block's endpoint, with no
    AWS environment to fall back on."""
    from prefect_aws import AwsCredentials

    from tasks.aws import AwsSettings, client

    prefix = f"bbf-block-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        [sys.executable, "-m", "tasks.monitoring", "--aws-credentials", emulator_block, "alarms", "--model-id",
         CLAUDE, "--prefix", prefix],
        cwd=REPO, env=_no_aws_env(prefect_api, tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    names = json.loads(done.stdout)["alarms"]
    assert names and all(name.startswith(prefix) for name in names)
    aws = AwsSettings.from_env(credentials=AwsCredentials.load(emulator_block))
    found = client("cloudwatch", aws).describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in found) == sorted(names)


def test_without_a_block_the_default_chain_and_environment_stay_in_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.core.config import config_from_params

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cfg = config_from_params({"model_id": CLAUDE, "input_path": str(TOPICS), "prompt_id": "joke_about_topic"})
    assert cfg.aws_credentials is None and cfg.aws.credentials is None
    assert (cfg.aws.endpoint_url, cfg.aws.region) == ("http://127.0.0.1:9", "eu-west-1")


def test_a_block_wins_over_the_environment_and_an_explicit_region_over_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    from tasks.aws import storage_options
    from tasks.core.config import config_from_params

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    block = AwsCredentials(aws_access_key_id="k", aws_secret_access_key="s", region_name="us-west-2",
                           aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:8"))
    params = {"model_id": CLAUDE, "input_path": str(TOPICS), "prompt_id": "joke_about_topic",
              "aws_credentials": block}
    cfg = config_from_params(params)
    assert (cfg.aws.endpoint_url, cfg.aws.region) == ("http://127.0.0.1:8", "us-west-2")
    assert config_from_params({**params, "region": "eu-central-1"}).aws.region == "eu-central-1"
    options = storage_options(cfg.aws)  # Polars signs with the block's keys, at the block's endpoint
    assert (options["aws_access_key_id"], options["aws_secret_access_key"]) == ("k", "s")
    assert options["aws_endpoint_url"] == "http://127.0.0.1:8" and options["aws_region"] == "us-west-2"
    # The block is not part of the run's identity: another way to the same account is the same run.
    assert cfg.key == config_from_params({**params, "aws_credentials": None}).key


@pytest.mark.parametrize("name", ["local", "ecs"])
def test_a_deployment_from_prefect_yaml_takes_a_block_reference(name: str, prefect_api: str) -> None:
    """A run of a deployment as prefect.yaml declares it, given the block by reference (the way the form's
    block picker and `--params` give it), is accepted by the server and resolved by the flow."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema
    from prefect_aws import AwsCredentials

    from flows.batch_inference import batch_inference

    [spec] = [d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] if d["name"] == name]
    block = f"bbf-ref-{uuid.uuid4().hex[:8]}"
    block_id = AwsCredentials(region_name="eu-west-1").save(block)
    refs = [{"$ref": {"block_document_slug": f"aws-credentials/{block}"}},
            {"$ref": {"block_document_id": str(block_id)}}]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(batch_inference)
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"{name}-{block}", parameter_openapi_schema=parameter_schema(
                batch_inference.fn).model_dump_for_openapi(),
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True))
        try:
            for ref in refs:
                flow_run = client.create_flow_run_from_deployment(
                    deployment_id, parameters={"aws_credentials": ref, "s3_uri": "s3://b/in.csv"})
                resolved = batch_inference.validate_parameters(flow_run.parameters)["aws_credentials"]
                assert isinstance(resolved, AwsCredentials) and resolved.region_name == "eu-west-1"
                client.delete_flow_run(flow_run.id)
        finally:
            client.delete_deployment(deployment_id)
            client.delete_block_document(block_id)


def test_a_block_that_assumes_a_role_renews_its_credentials_before_they_expire(emulator: Any) -> None:
    """prefect-aws assumes the role once (its credentials end after an hour); a run polls for many hours.
    With credentials of 15 minutes (DurationSeconds=900), botocore is always within its refresh window:
    every use assumes the role again, and the clients keep working."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    from tasks.aws import AwsSettings, client, storage_options

    block = AwsCredentials(
        aws_access_key_id="base-key", aws_secret_access_key="base-secret", region_name=emulator.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=emulator.url),
        assume_role_arn="arn:aws:iam::123456789012:role/BedrockBatchCaller",
        assume_role_kwargs={"DurationSeconds": 900},
    )
    from botocore.credentials import RefreshableCredentials

    from tasks.aws import _session

    aws = AwsSettings.from_env(credentials=block)
    # One session per block, whose credentials every client built from it shares, and which renew.
    assert _session(aws) is _session(aws)
    credentials = _session(aws).get_credentials()
    assert isinstance(credentials, RefreshableCredentials)
    keys = {credentials.get_frozen_credentials().access_key for _ in range(3)}
    assert len(keys) == 3 and "base-key" not in keys, keys  # assumed again each time, never the base keys
    assert storage_options(aws)["aws_access_key_id"] not in keys | {"base-key"}  # Polars: the renewed ones
    bucket = f"assumed-{uuid.uuid4().hex[:8]}"
    s3 = client("s3", aws)
    s3.create_bucket(Bucket=bucket)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    identity = client("sts", aws).get_caller_identity()["Arn"]
    assert ":assumed-role/BedrockBatchCaller/bedrock-batch-flows-" in identity, identity
