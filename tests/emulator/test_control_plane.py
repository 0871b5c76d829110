"""The control plane as boto3 sees it: every operation, every error code, idempotency and throttling."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.config import Config

from tests.emulator.conftest import CLAUDE, ROLE, claude_record


@pytest.fixture
def input_uri(put_jsonl) -> str:
    return put_jsonl([claude_record(i) for i in range(100)])


def test_create_returns_an_arn_and_get_accepts_arn_or_id(bedrock, submit, input_uri, finish):
    arn = submit(input_uri, name="get-by-arn-or-id")
    job_id = arn.rsplit("/", 1)[-1]
    assert arn == f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{job_id}"
    assert len(job_id) == 12

    by_arn = bedrock.get_model_invocation_job(jobIdentifier=arn)
    by_id = bedrock.get_model_invocation_job(jobIdentifier=job_id)
    assert by_arn["jobArn"] == by_id["jobArn"] == arn
    assert by_arn["jobName"] == "get-by-arn-or-id"
    assert by_arn["modelId"] == CLAUDE
    assert by_arn["roleArn"] == ROLE
    assert by_arn["timeoutDurationInHours"] == 24
    assert by_arn["jobExpirationTime"] - by_arn["submitTime"] == timedelta(hours=24)

    done = finish(arn)
    assert done["status"] == "Completed"
    assert (done["totalRecordCount"], done["processedRecordCount"]) == (100, 100)
    assert (done["successRecordCount"], done["errorRecordCount"]) == (100, 0)
    assert done["endTime"] >= done["submitTime"]


def test_list_filters_sorts_and_paginates(bedrock, submit, input_uri, finish):
    tag = uuid.uuid4().hex[:8]
    arns = [submit(input_uri, name=f"list-{tag}-{i}") for i in range(5)]
    for arn in arns:
        finish(arn)

    mine = bedrock.list_model_invocation_jobs(nameContains=tag, sortOrder="Ascending")[
        "invocationJobSummaries"
    ]
    assert [j["jobArn"] for j in mine] == arns
    newest_first = bedrock.list_model_invocation_jobs(nameContains=tag)["invocationJobSummaries"]
    assert [j["jobArn"] for j in newest_first] == arns[::-1]

    pages = bedrock.get_paginator("list_model_invocation_jobs").paginate(
        nameContains=tag, sortBy="CreationTime", sortOrder="Ascending", PaginationConfig={"PageSize": 2}
    )
    sizes_and_arns = [
        (len(p["invocationJobSummaries"]), [j["jobArn"] for j in p["invocationJobSummaries"]]) for p in pages
    ]
    assert [size for size, _ in sizes_and_arns] == [2, 2, 1]
    assert [arn for _, page in sizes_and_arns for arn in page] == arns

    completed = bedrock.list_model_invocation_jobs(nameContains=tag, statusEquals="Completed")
    assert len(completed["invocationJobSummaries"]) == 5
    assert (
        bedrock.list_model_invocation_jobs(nameContains=tag, statusEquals="Failed")["invocationJobSummaries"]
        == []
    )

    third = bedrock.get_model_invocation_job(jobIdentifier=arns[2])["submitTime"]
    after = bedrock.list_model_invocation_jobs(nameContains=tag, submitTimeAfter=third)[
        "invocationJobSummaries"
    ]
    assert {j["jobArn"] for j in after} == set(arns[3:])
    before = bedrock.list_model_invocation_jobs(nameContains=tag, submitTimeBefore=third)[
        "invocationJobSummaries"
    ]
    assert {j["jobArn"] for j in before} == set(arns[:2])
    future = datetime.now(UTC) + timedelta(days=1)
    assert bedrock.list_model_invocation_jobs(submitTimeAfter=future)["invocationJobSummaries"] == []


def test_client_request_token_is_idempotent(emulator, bedrock, bucket, input_uri, finish):
    request = dict(
        jobName=f"idem-{uuid.uuid4().hex[:8]}",
        roleArn=ROLE,
        modelId=CLAUDE,
        clientRequestToken="token-1-abc",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/output/"}},
    )
    first = bedrock.create_model_invocation_job(**request)["jobArn"]
    again = bedrock.create_model_invocation_job(**request)["jobArn"]
    assert again == first
    finish(first)
    assert bedrock.create_model_invocation_job(**request)["jobArn"] == first  # even once terminal

    mine = [
        c
        for c in emulator.calls()
        if c["jobName"] == request["jobName"] and c["operation"] == "CreateModelInvocationJob"
    ]
    assert [c["status_code"] for c in mine] == [200, 200, 200]
    assert {c["jobArn"] for c in mine} == {first}
    assert (
        len(bedrock.list_model_invocation_jobs(nameContains=request["jobName"])["invocationJobSummaries"])
        == 1
    )

    with pytest.raises(bedrock.exceptions.ConflictException, match="clientRequestToken"):
        bedrock.create_model_invocation_job(**{**request, "jobName": request["jobName"] + "-other"})


def test_a_job_name_is_unique(bedrock, submit, input_uri):
    name = f"dup-{uuid.uuid4().hex[:8]}"
    submit(input_uri, name=name)
    with pytest.raises(bedrock.exceptions.ConflictException, match="already exists"):
        submit(input_uri, name=name)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"jobName": "under_score"}, "at 'jobName' failed to satisfy constraint"),
        ({"jobName": "-leading-dash"}, "at 'jobName'"),
        ({"jobName": "x" * 64}, "at 'jobName'"),
        ({"input": "s3://BUCKET/x.jsonl"}, "at 'inputDataConfig.s3InputDataConfig.s3Uri'"),
        ({"input": "s3://bucket-ok/run=1/x.jsonl"}, "s3InputDataConfig.s3Uri"),
        ({"input": "s3://bucket-ok/a:b/x.jsonl"}, "s3InputDataConfig.s3Uri"),
        ({"input": "s3://bucket-ok/a+b/x.jsonl"}, "s3InputDataConfig.s3Uri"),
        ({"timeoutDurationInHours": 169}, "less than or equal to 168"),
        ({"roleArn": "not-a-role"}, "at 'roleArn'"),
        ({"modelId": "Not A Model!"}, "at 'modelId'"),
    ],
)
def test_create_validates_like_aws(bedrock, bucket, change, needle):
    request = dict(
        jobName="valid-name",
        roleArn=ROLE,
        modelId=CLAUDE,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/input/x.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/o/"}},
    )
    change = dict(change)
    if "input" in change:
        request["inputDataConfig"] = {"s3InputDataConfig": {"s3Uri": change.pop("input")}}
    with pytest.raises(bedrock.exceptions.ValidationException, match=needle) as info:
        bedrock.create_model_invocation_job(**{**request, **change})
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_checks_boto3_would_do_client_side_are_also_enforced_by_the_server(emulator, bucket):
    """Bounds botocore checks before sending (timeout < 24, missing members) are refused server-side too."""
    raw = boto3.client(
        "bedrock",
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
        config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(raw.exceptions.ValidationException, match="greater than or equal to 24"):
        raw.create_model_invocation_job(
            jobName="short-timeout",
            roleArn=ROLE,
            modelId=CLAUDE,
            timeoutDurationInHours=1,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/i.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/o/"}},
        )
    with pytest.raises(raw.exceptions.ValidationException, match="Value null at 'roleArn'"):
        raw.create_model_invocation_job(
            jobName="no-role",
            modelId=CLAUDE,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/i.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/o/"}},
        )


def test_an_unknown_model_is_a_validation_error(bedrock, submit, input_uri):
    with pytest.raises(bedrock.exceptions.ValidationException, match="model identifier is invalid"):
        submit(input_uri, model_id="acme.gpt-9000-v1:0")


def test_unknown_jobs_are_not_found(bedrock):
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as info:
        bedrock.get_model_invocation_job(jobIdentifier="abcdefabcdef")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.stop_model_invocation_job(
            jobIdentifier="arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdefabcdef"
        )
    with pytest.raises(bedrock.exceptions.ValidationException):
        bedrock.get_model_invocation_job(jobIdentifier="NOT_AN_ID")


def test_list_validates_its_query(bedrock):
    with pytest.raises(bedrock.exceptions.ValidationException, match="less than or equal to 1000"):
        bedrock.list_model_invocation_jobs(maxResults=1001)
    with pytest.raises(bedrock.exceptions.ValidationException, match="enum value set"):
        bedrock.list_model_invocation_jobs(statusEquals="Running")


def test_stopping_a_finished_job_is_a_conflict(bedrock, submit, input_uri, finish):
    arn = submit(input_uri)
    assert finish(arn)["status"] == "Completed"
    with pytest.raises(bedrock.exceptions.ConflictException, match="Completed"):
        bedrock.stop_model_invocation_job(jobIdentifier=arn)


def test_throttling_per_operation(emulator, bedrock, knobs, input_uri, submit):
    knobs(throttle_rate={"ListModelInvocationJobs": 1.0})
    with pytest.raises(bedrock.exceptions.ThrottlingException) as info:
        bedrock.list_model_invocation_jobs()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert submit(input_uri)  # other operations are not throttled
    assert emulator.calls()[-2]["operation"] == "ListModelInvocationJobs"
    assert emulator.calls()[-2]["status_code"] == 429


def test_throttling_rate_is_seeded(emulator, bedrock, knobs):
    def outcomes() -> list[int]:
        codes = []
        for _ in range(20):
            try:
                bedrock.list_model_invocation_jobs(maxResults=1)
                codes.append(200)
            except bedrock.exceptions.ThrottlingException:
                codes.append(429)
        return codes

    knobs(throttle_rate=0.5, seed=3)
    first = outcomes()
    knobs(throttle_rate=0.5, seed=3)  # setting the profile restarts the seeded draws
    assert outcomes() == first
    assert 5 <= first.count(429) <= 15
    logged = [c["status_code"] for c in emulator.calls() if c["operation"] == "ListModelInvocationJobs"][-40:]
    assert logged == first + first
