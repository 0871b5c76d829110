"""Pre-flight checks as pure functions: a RunConfig and a client factory (fakes here, no endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.aws.preflight import RunRefused, check_bucket, check_model, check_role, check_source, refusal
from tasks.core.config import RunConfig

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"


def cfg(**overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"model_id": CLAUDE, "input_path": "in.csv", "output_uri": "s3://bkt/out",
                              "role_arn": "arn:aws:iam::123456789012:role/R", "region": "us-east-1"}
    return RunConfig(**{**values, **overrides})


def error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}, "Op")


class FakeBedrock:
    models = [CLAUDE, "amazon.titan-embed-text-v2:0", "cohere.command-r-v1:0"]
    profiles = [f"us.{CLAUDE}"]

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_foundation_model(self, modelIdentifier: str) -> dict[str, Any]:
        self.calls.append("GetFoundationModel")
        if modelIdentifier not in self.models:
            raise error("ResourceNotFoundException", 404)
        return {"modelDetails": {"modelId": modelIdentifier}}

    def get_inference_profile(self, inferenceProfileIdentifier: str) -> dict[str, Any]:
        self.calls.append("GetInferenceProfile")
        if inferenceProfileIdentifier not in self.profiles:
            raise error("ResourceNotFoundException", 404)
        return {"inferenceProfileId": inferenceProfileIdentifier}

    def list_foundation_models(self) -> dict[str, Any]:
        return {"modelSummaries": [{"modelId": m} for m in self.models]}

    def list_inference_profiles(self, **_: Any) -> dict[str, Any]:
        return {"inferenceProfileSummaries": [{"inferenceProfileId": p} for p in self.profiles]}


class FakeS3:
    def __init__(self, region: str | None = "us-east-1", head: ClientError | None = None) -> None:
        self.region, self.head = region, head

    def head_bucket(self, Bucket: str) -> dict[str, Any]:
        if self.head is not None:
            raise self.head
        return {"BucketRegion": self.region}

    def get_bucket_location(self, Bucket: str) -> dict[str, Any]:
        raise error("AccessDenied", 403)


def factory(**clients: Any) -> Any:
    return lambda service, settings=None: clients[service]


@pytest.mark.parametrize("overrides, line", [
    ({"max_records_per_job": 50}, "max_records_per_job 50 is below Bedrock's minimum of 100 records per job "
                                  "(min_records_per_job 100): raise max_records_per_job to 100 or more"),
    ({"max_records_per_job": 50, "min_records_per_job": 60}, "max_records_per_job 50 is below "
     "min_records_per_job 60: raise max_records_per_job to 60 or more (Bedrock's own minimum is 100 records per job)"),
    ({"timeout_hours": 12}, "timeout_hours 12 is outside Bedrock's bounds of 24..168 hours: give a value between them"),
    ({"max_num_jobs": 0}, "max_num_jobs 0 must be 1 or more (leave it unset for all rows)"),
])
def test_bounds_are_refused_when_the_config_is_built_with_their_numbers(overrides: dict[str, Any], line: str) -> None:
    with pytest.raises(RunRefused) as refused:
        cfg(**overrides)
    assert str(refused.value) == line


def test_a_typo_in_the_model_id_gets_a_did_you_mean_from_the_catalog() -> None:
    bedrock = FakeBedrock()
    with pytest.raises(RunRefused, match=rf"did you mean '{CLAUDE}' \(or 'us.{CLAUDE}'\)\?$"):
        check_model(cfg(model_id="anthropic.claude-3-haiku-2024037-v1:0"), factory(bedrock=bedrock))
    assert check_model(cfg(model_id=f"us.{CLAUDE}"), factory(bedrock=bedrock)) == []
    assert bedrock.calls == ["GetFoundationModel", "GetInferenceProfile"]


def test_a_real_model_of_a_family_the_flow_cannot_format_points_to_converse() -> None:
    with pytest.raises(RunRefused, match="Converse"):
        check_model(cfg(model_id="cohere.command-r-v1:0"), factory(bedrock=FakeBedrock()))
    assert check_model(cfg(model_id="cohere.command-r-v1:0", invocation_type="Converse"),
                       factory(bedrock=FakeBedrock())) == []


def test_role_arn_is_required_unless_dry_run() -> None:
    with pytest.raises(RunRefused, match="role_arn is not set"):
        check_role(cfg(role_arn=None))
    with pytest.raises(RunRefused, match="is not an IAM role ARN"):
        check_role(cfg(role_arn="BedrockRole"))
    check_role(cfg(role_arn=None, dry_run=True))


def test_the_bucket_must_exist_and_be_in_the_runs_region() -> None:
    with pytest.raises(RunRefused, match="output bucket 'bkt' does not exist"):
        check_bucket(cfg(), factory(s3=FakeS3(head=error("404", 404))))
    with pytest.raises(RunRefused, match="is in eu-west-1, but the run's region is us-east-1"):
        check_bucket(cfg(), factory(s3=FakeS3(region="eu-west-1")))
    # No s3:ListBucket (403): the region comes from the error's header; the write probe decides the rest.
    denied = error("403", 403, {"x-amz-bucket-region": "eu-west-1"})
    with pytest.raises(RunRefused, match="is in eu-west-1"):
        check_bucket(cfg(), factory(s3=FakeS3(head=denied)))
    # Neither the header nor GetBucketLocation: a warning, not a refusal.
    warnings = check_bucket(cfg(), factory(s3=FakeS3(head=error("403", 403))))
    assert len(warnings) == 1 and "GetBucketLocation" in warnings[0]


def test_an_empty_file_and_a_header_only_file_are_named(tmp_path: Path) -> None:
    empty, header = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_bytes(b"")
    header.write_text("record_id,topic\n")
    with pytest.raises(RunRefused, match=rf"input file {empty} is empty \(0 bytes\)"):
        check_source(cfg(input_path=str(empty)))
    with pytest.raises(RunRefused, match=rf"input {header} has no rows \(only a header line\)"):
        check_source(cfg(input_path=str(header)))


def test_a_refusal_is_one_line_and_keeps_its_cause() -> None:
    cause = ValueError("duplicate ids:\n  r-1 x2")
    refused = refusal(cause)
    assert str(refused) == "duplicate ids: r-1 x2" and refused.__cause__ is cause
    assert refusal(refused) is refused
