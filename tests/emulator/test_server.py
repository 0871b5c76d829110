"""The one endpoint: moto's services beside Bedrock, the /_emulator endpoints, CloudWatch, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest

from emulator import EmulatorServer, Profile, load_profile, start
from tests.emulator.conftest import claude_record, wait_for

REPO = Path(__file__).resolve().parents[2]


def _http(url: str, payload: dict | None = None) -> object:
    data = None if payload is None else json.dumps(payload).encode()
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, method="POST" if data else "GET")
    ) as r:
        return json.loads(r.read())


def test_env_is_all_a_client_needs(emulator, monkeypatch, bucket):
    env = emulator.env()
    assert env["AWS_ENDPOINT_URL"] == emulator.url and env["AWS_ALLOW_HTTP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    session = boto3.session.Session()
    assert bucket in [b["Name"] for b in session.client("s3").list_buckets()["Buckets"]]
    assert session.client("sts").get_caller_identity()["Account"] == "123456789012"
    session.client("iam").create_role(RoleName="bedrock-batch-test", AssumeRolePolicyDocument="{}")
    assert "modelSummaries" not in session.client("bedrock").list_model_invocation_jobs()


def test_emulator_endpoints(emulator, submit, put_jsonl, finish):
    arn = submit(put_jsonl([claude_record(i) for i in range(100)]), name="endpoint-check")
    finish(arn)
    calls = _http(f"{emulator.url}/_emulator/calls")
    create = next(c for c in calls if c["jobName"] == "endpoint-check")
    assert set(create) == {
        "operation",
        "jobName",
        "clientRequestToken",
        "jobArn",
        "modelId",
        "status_code",
        "time",
    }
    assert (create["operation"], create["jobArn"], create["status_code"]) == (
        "CreateModelInvocationJob",
        arn,
        200,
    )
    stats = _http(f"{emulator.url}/_emulator/stats")
    assert stats["jobs"] >= 1 and stats["Completed"] >= 1
    assert stats["peak_in_flight"]["us.anthropic.claude-3-5-haiku-20241022-v1:0"] >= 1

    original = emulator.profile
    try:
        assert _http(f"{emulator.url}/_emulator/profile", {"seed": 99, "time_scale": 1e-4})["seed"] == 99
        assert emulator.profile.seed == 99
    finally:
        emulator.set_profile(original)


def test_reset_clears_jobs_and_calls_but_keeps_s3(s3, bucket):
    with start(profile={"time_scale": 1e-4}) as server:
        client = server.client("s3")
        client.create_bucket(Bucket=bucket + "-r")
        server.client("bedrock").list_model_invocation_jobs()
        assert server.calls()
        _http(f"{server.url}/_emulator/reset", {})
        assert server.calls() == [] and server.stats()["jobs"] == 0
        assert bucket + "-r" in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_cloudwatch_metrics_are_published_while_jobs_run(emulator, clients, knobs, submit, put_jsonl, finish):
    model = "anthropic.claude-metrics-test-v1:0"  # a model of its own, so only this job's metrics count
    # 1,000 records -> 1 s real, a datapoint every 0.2 s
    knobs(record_s=10, metrics_interval_s=2000, extra_models=[model])
    finish(submit(put_jsonl([claude_record(i) for i in range(1000)]), model_id=model))
    cloudwatch = clients["cloudwatch"]

    def names():
        metrics = cloudwatch.list_metrics(
            Namespace="AWS/Bedrock/Batch", Dimensions=[{"Name": "ModelId", "Value": model}]
        )["Metrics"]
        return {m["MetricName"] for m in metrics} or None

    assert wait_for(names, what="metrics") >= {
        "NumberOfRecordsPendingProcessing",
        "NumberOfInputTokensProcessedPerMinute",
        "NumberOfOutputTokensProcessedPerMinute",
        "NumberOfTokensPendingProcessing",
    }


def test_profiles_load_from_dicts_json_paths_and_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"seed": 5, "quota": 3, "throttle_rate": {"InvokeModel": 0.1}}))
    assert load_profile(str(path)).quota == 3
    assert load_profile('{"seed": 6}').seed == 6
    assert load_profile({"fail_jobs_matching": "x"}).fail_jobs_matching == ("x",)
    monkeypatch.setenv("BEDROCK_EMULATOR_PROFILE", str(path))
    assert load_profile(None) == Profile(seed=5, quota=3, throttle_rate={"InvokeModel": 0.1})
    with pytest.raises(ValueError, match="unknown profile keys"):
        load_profile({"time_scael": 1})


def test_start_reads_the_profile_environment(monkeypatch):
    monkeypatch.setenv("BEDROCK_EMULATOR_PROFILE", '{"quota": 4, "time_scale": 0.001, "workers": 3}')
    with start() as server:
        assert isinstance(server, EmulatorServer)
        assert (server.profile.quota, server.region) == (4, "us-east-1")
        stats = _http(f"{server.url}/_emulator/stats")
        assert stats["quota"] == 4 and stats["workers"]["size"] == 3
        server.set_profile({"workers": 1})
        assert _http(f"{server.url}/_emulator/stats")["workers"]["size"] == 1


def test_python_dash_m_emulator_serves_and_prints_its_settings():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--time-scale", "0.001"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        while not any("AWS_ALLOW_HTTP" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "the emulator exited early"
            lines.append(line)
        url = next(line.split("=", 1)[1].strip() for line in lines if "AWS_ENDPOINT_URL=" in line)
        client = boto3.client(
            "bedrock",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )
        assert client.list_model_invocation_jobs()["invocationJobSummaries"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_error_rate_answers_client_requests_with_retryable_s3_errors(emulator, knobs, s3, bucket):
    from botocore.exceptions import ClientError

    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    knobs(s3_error_rate=1.0, seed=1)
    codes = []
    for _ in range(8):
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket=bucket, Key="k")  # the `s3` fixture's client does not retry
        response = caught.value.response
        codes.append((response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]))
    assert set(codes) == {("InternalError", 500), ("SlowDown", 503)}
    assert emulator.stats()["s3_errors"] == {code: codes.count((code, status)) for code, status in set(codes)}
    # The emulator's own S3 access (what its jobs read and write) is spared.
    assert emulator.client("s3").get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    # Seeded: the same profile gives the same sequence of faults.
    knobs(s3_error_rate=0.5, seed=1)
    first = [_s3_ok(s3, bucket) for _ in range(20)]
    knobs(s3_error_rate=0.5, seed=1)
    assert [_s3_ok(s3, bucket) for _ in range(20)] == first and 0 < sum(first) < 20


def _s3_ok(s3, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key="k")
        return True
    except ClientError:
        return False
