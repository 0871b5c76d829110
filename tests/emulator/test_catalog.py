"""The model catalog: ListFoundationModels / GetFoundationModel / ListInferenceProfiles / GetInferenceProfile in
botocore's shapes, identifiers accepted and refused as AWS does, and a request id on every Bedrock response."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config

from emulator.catalog import INVALID_MODEL
from emulator.service_model import check_response
from tests.emulator.conftest import claude_record

ACCOUNT = "123456789012"
HAIKU_3 = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA_BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]})
CLAUDE_BODY = json.dumps(
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
)
USER = [{"role": "user", "content": [{"text": "hello"}]}]
# Unknown: made up, a wrong version, a profile of another geography, an ARN of another region.
UNKNOWN = [
    "acme.gpt-9000-v1:0",
    "anthropic.claude-3-haiku-20240307-v9:0",
    "eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "arn:aws:bedrock:us-west-2::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
]


def _client(emulator: Any, service: str, region: str = "us-east-1") -> Any:
    return boto3.client(
        service,
        endpoint_url=emulator.url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


class Raw:
    """The raw JSON bodies a client received, to check them against botocore's shapes."""

    def __init__(self, client: Any) -> None:
        self.bodies: list[dict[str, Any]] = []
        client.meta.events.register("after-call.bedrock.*", self._keep)

    def _keep(self, http_response: Any, **_: Any) -> None:
        self.bodies.append(json.loads(http_response.content))


@pytest.fixture
def raw(bedrock) -> Raw:
    return Raw(bedrock)


def _ids(summaries: list[dict[str, Any]]) -> set[str]:
    return {m["modelId"] for m in summaries}


# --------------------------------------------------------------------------------------- foundation models
def test_list_foundation_models_has_the_batch_models_in_botocores_shape(bedrock, raw):
    models = bedrock.list_foundation_models()["modelSummaries"]
    check_response(raw.bodies[-1], "ListFoundationModelsResponse")
    assert _ids(models) >= {
        HAIKU_3,
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "anthropic.claude-haiku-4-5-20251001-v1:0",
        "amazon.nova-micro-v1:0",
        "amazon.nova-lite-v1:0",
        "amazon.nova-pro-v1:0",
        "meta.llama3-8b-instruct-v1:0",
        "meta.llama3-1-70b-instruct-v1:0",
        "meta.llama3-3-70b-instruct-v1:0",
        "mistral.mistral-7b-instruct-v0:2",
        "mistral.mixtral-8x7b-instruct-v0:1",
        "mistral.mistral-large-2407-v1:0",
        "amazon.titan-embed-text-v2:0",
        "cohere.command-r-v1:0",
        "cohere.command-r-plus-v1:0",
    }
    haiku = next(m for m in models if m["modelId"] == HAIKU_3)
    assert haiku["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU_3}"
    assert (haiku["providerName"], haiku["modelName"]) == ("Anthropic", "Claude 3 Haiku")
    assert haiku["outputModalities"] == ["TEXT"] and haiku["modelLifecycle"]["status"] == "ACTIVE"


def test_list_foundation_models_filters(bedrock, raw):
    embedding = bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    assert "amazon.titan-embed-text-v2:0" in _ids(embedding)
    assert all(m["outputModalities"] == ["EMBEDDING"] for m in embedding)

    anthropic = _ids(bedrock.list_foundation_models(byProvider="Anthropic")["modelSummaries"])
    assert anthropic == _ids(bedrock.list_foundation_models(byProvider="anthropic")["modelSummaries"])
    assert HAIKU_3 in anthropic and all(m.startswith("anthropic.") for m in anthropic)

    on_demand = _ids(bedrock.list_foundation_models(byInferenceType="ON_DEMAND")["modelSummaries"])
    assert HAIKU_3 in on_demand
    assert "anthropic.claude-3-7-sonnet-20250219-v1:0" not in on_demand  # reached through a profile only

    tunable = bedrock.list_foundation_models(byCustomizationType="FINE_TUNING")["modelSummaries"]
    assert "amazon.nova-micro-v1:0" in _ids(tunable)
    assert all("FINE_TUNING" in m["customizationsSupported"] for m in tunable)
    for body in raw.bodies:
        check_response(body, "ListFoundationModelsResponse")

    with pytest.raises(bedrock.exceptions.ValidationException, match="byOutputModality"):
        bedrock.list_foundation_models(byOutputModality="VIDEO")


def test_get_foundation_model_by_id_or_arn(bedrock, raw):
    details = bedrock.get_foundation_model(modelIdentifier="amazon.titan-embed-text-v2:0")["modelDetails"]
    check_response(raw.bodies[-1], "GetFoundationModelResponse")
    assert details["modelName"] == "Titan Text Embeddings V2" and details["outputModalities"] == ["EMBEDDING"]
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU_3}"
    assert bedrock.get_foundation_model(modelIdentifier=arn)["modelDetails"]["modelId"] == HAIKU_3
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as info:
        bedrock.get_foundation_model(modelIdentifier="acme.gpt-9000-v1:0")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# -------------------------------------------------------------------------------------- inference profiles
def test_list_inference_profiles_shows_the_regions_geography(emulator, bedrock, raw):
    profiles = bedrock.list_inference_profiles()["inferenceProfileSummaries"]
    check_response(raw.bodies[-1], "ListInferenceProfilesResponse")
    ids = {p["inferenceProfileId"] for p in profiles}
    assert {
        "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
        "global.anthropic.claude-sonnet-4-20250514-v1:0",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "us.amazon.nova-lite-v1:0",
        "us.meta.llama3-3-70b-instruct-v1:0",
    } <= ids
    assert all(i.startswith(("us.", "global.")) for i in ids)
    nova = next(p for p in profiles if p["inferenceProfileId"] == "us.amazon.nova-lite-v1:0")
    arn = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/us.amazon.nova-lite-v1:0"
    assert nova["inferenceProfileArn"] == arn
    assert (nova["type"], nova["status"]) == ("SYSTEM_DEFINED", "ACTIVE")
    model_arns = [m["modelArn"] for m in nova["models"]]
    assert "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0" in model_arns

    eu = _client(emulator, "bedrock", "eu-west-1").list_inference_profiles()["inferenceProfileSummaries"]
    assert "eu.anthropic.claude-3-7-sonnet-20250219-v1:0" in {p["inferenceProfileId"] for p in eu}
    assert all(p["inferenceProfileId"].startswith(("eu.", "global.")) for p in eu)
    assert all(":eu-west-1:" in p["inferenceProfileArn"] for p in eu)

    assert bedrock.list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"] == []
    assert {
        p["inferenceProfileId"] for p in bedrock.list_inference_profiles(typeEquals="SYSTEM_DEFINED")[
            "inferenceProfileSummaries"]
    } == ids  # fmt: skip
    pages = list(bedrock.get_paginator("list_inference_profiles").paginate(PaginationConfig={"PageSize": 7}))
    assert len(pages) > 1
    assert [p["inferenceProfileId"] for page in pages for p in page["inferenceProfileSummaries"]] == [
        p["inferenceProfileId"] for p in profiles
    ]


def test_get_inference_profile_by_id_or_arn(bedrock, raw):
    profile_id = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    profile = bedrock.get_inference_profile(inferenceProfileIdentifier=profile_id)
    check_response(raw.bodies[-1], "GetInferenceProfileResponse")
    assert profile["inferenceProfileId"] == profile_id and profile["type"] == "SYSTEM_DEFINED"
    assert len(profile["models"]) == 3  # us-east-1, us-east-2, us-west-2
    by_arn = bedrock.get_inference_profile(inferenceProfileIdentifier=profile["inferenceProfileArn"])
    assert by_arn["inferenceProfileId"] == profile_id
    for missing in ("eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "us.acme.model-x"):
        with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
            bedrock.get_inference_profile(inferenceProfileIdentifier=missing)


# ------------------------------------------------------------------------------------ identifiers accepted
@pytest.mark.parametrize(
    "model_id",
    [
        "amazon.nova-lite-v1:0",
        "us.amazon.nova-lite-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0",
        f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/us.amazon.nova-lite-v1:0",
        f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/team-a-amazon.nova-lite-v1:0",
    ],
)
def test_ids_profiles_and_arns_are_accepted(runtime, model_id):
    reply = json.loads(runtime.invoke_model(modelId=model_id, body=NOVA_BODY)["body"].read())
    assert reply["output"]["message"]["content"][0]["text"] == "Emulated reply to: hello"
    assert runtime.converse(modelId=model_id, messages=USER)["stopReason"] == "end_turn"


def test_profiles_of_the_callers_geography_are_accepted(emulator):
    eu = _client(emulator, "bedrock-runtime", "eu-west-1")
    reply = eu.invoke_model(modelId="eu.anthropic.claude-3-7-sonnet-20250219-v1:0", body=CLAUDE_BODY)
    assert json.loads(reply["body"].read())["stop_reason"] == "end_turn"
    with pytest.raises(eu.exceptions.ValidationException, match=INVALID_MODEL):
        eu.invoke_model(modelId="us.anthropic.claude-3-7-sonnet-20250219-v1:0", body=CLAUDE_BODY)


# ------------------------------------------------------------------------------------- identifiers refused
def _refused(info: Any) -> None:
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ValidationException", "The provided model identifier is invalid.")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize("model_id", UNKNOWN)
def test_unknown_ids_are_refused_by_create_invoke_and_converse(emulator, bedrock, runtime, bucket, model_id):
    before = emulator.stats()["jobs"]
    with pytest.raises(bedrock.exceptions.ValidationException) as info:
        bedrock.create_model_invocation_job(
            jobName=f"unknown-{uuid.uuid4().hex[:8]}",
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/bedrock-batch",
            modelId=model_id,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/input/x.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/output/"}},
        )
    _refused(info)
    assert emulator.stats()["jobs"] == before
    with pytest.raises(runtime.exceptions.ValidationException) as info:
        runtime.invoke_model(modelId=model_id, body=CLAUDE_BODY)
    _refused(info)
    with pytest.raises(runtime.exceptions.ValidationException) as info:
        runtime.converse(modelId=model_id, messages=USER)
    _refused(info)
    refusals = [c for c in emulator.calls() if c["modelId"] == model_id and c["status_code"] == 400]
    assert {c["operation"] for c in refusals} >= {"CreateModelInvocationJob", "InvokeModel", "Converse"}


def test_a_real_model_without_an_emulated_format_converses_but_does_not_invoke(
    bedrock, runtime, submit, put_jsonl, finish, outputs
):
    cohere = "cohere.command-r-v1:0"
    assert runtime.converse(modelId=cohere, messages=USER)["output"]["message"]["content"] == [
        {"text": "Emulated reply to: hello"}
    ]
    with pytest.raises(runtime.exceptions.ValidationException, match="does not emulate the request format"):
        runtime.invoke_model(modelId=cohere, body=b'{"message": "hello"}')
    with pytest.raises(bedrock.exceptions.ValidationException, match="does not emulate the request format"):
        submit(put_jsonl([claude_record(i) for i in range(100)]), model_id=cohere)

    records = [{"recordId": f"r{i}", "modelInput": {"messages": USER}} for i in range(100)]
    arn = submit(put_jsonl(records), model_id=cohere, modelInvocationType="Converse")
    assert finish(arn)["status"] == "Completed"
    assert outputs(arn)[0]["modelOutput"]["stopReason"] == "end_turn"


def test_converse_refuses_embedding_models(runtime):
    for model in ("amazon.titan-embed-text-v2:0", "cohere.embed-english-v3"):
        with pytest.raises(runtime.exceptions.ValidationException, match="doesn't support the model"):
            runtime.converse(modelId=model, messages=USER)


def test_extra_models_adds_made_up_ids(knobs, runtime):
    made_up = "anthropic.claude-made-up-v1:0"
    with pytest.raises(runtime.exceptions.ValidationException, match=INVALID_MODEL):
        runtime.invoke_model(modelId=made_up, body=CLAUDE_BODY)
    knobs(extra_models=["anthropic.claude-made-up-*", "acme.*"])
    reply = json.loads(runtime.invoke_model(modelId=made_up, body=CLAUDE_BODY)["body"].read())
    assert reply["content"][0]["text"] == "Emulated reply to: hi"
    assert runtime.converse(modelId="acme.gpt-9000-v1:0", messages=USER)["stopReason"] == "end_turn"


# -------------------------------------------------------------------------------------------- request ids
def _request_id(response_metadata: dict[str, Any]) -> str:
    request_id = response_metadata["RequestId"]
    assert str(uuid.UUID(request_id)) == request_id.lower()
    assert response_metadata["HTTPHeaders"]["x-amzn-requestid"] == request_id
    return request_id


def test_every_bedrock_response_has_a_request_id(bedrock, runtime, submit, put_jsonl):
    seen = [
        _request_id(bedrock.list_foundation_models()["ResponseMetadata"]),
        _request_id(bedrock.list_inference_profiles()["ResponseMetadata"]),
        _request_id(bedrock.list_model_invocation_jobs()["ResponseMetadata"]),
        _request_id(runtime.invoke_model(modelId="amazon.nova-lite-v1:0", body=NOVA_BODY)["ResponseMetadata"]),
        _request_id(runtime.converse(modelId="amazon.nova-lite-v1:0", messages=USER)["ResponseMetadata"]),
    ]
    arn = submit(put_jsonl([claude_record(i) for i in range(100)]))
    seen.append(_request_id(bedrock.get_model_invocation_job(jobIdentifier=arn)["ResponseMetadata"]))
    errors = [
        (bedrock.exceptions.ResourceNotFoundException, lambda: bedrock.get_model_invocation_job(
            jobIdentifier="abcdefabcdef")),
        (runtime.exceptions.ValidationException, lambda: runtime.invoke_model(modelId="acme.x-v1:0", body=b"{}")),
        (bedrock.exceptions.ValidationException, lambda: bedrock.list_model_invocation_jobs(maxResults=1001)),
    ]  # fmt: skip
    for kind, call in errors:
        with pytest.raises(kind) as info:
            call()
        seen.append(_request_id(info.value.response["ResponseMetadata"]))
    assert len(set(seen)) == len(seen)
