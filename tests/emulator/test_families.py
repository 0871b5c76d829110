"""Each model family answers in its real output shape, deterministically, in batch and on the runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.emulator.conftest import claude_record


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"text": text}]}]


FAMILIES = {
    "claude": (
        "anthropic.claude-3-haiku-20240307-v1:0",
        lambda t: {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": t}]}],
        },
        lambda o: o["content"][0]["text"],
    ),
    "nova": (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0",
        lambda t: {
            "schemaVersion": "messages-v1",
            "messages": _user(t),
            "inferenceConfig": {"maxTokens": 100},
        },
        lambda o: o["output"]["message"]["content"][0]["text"],
    ),
    "llama": (
        "meta.llama3-1-8b-instruct-v1:0",
        lambda t: {"prompt": t, "max_gen_len": 100},
        lambda o: o["generation"],
    ),
    "mistral": (
        "mistral.mistral-7b-instruct-v0:2",
        lambda t: {"prompt": t, "max_tokens": 100},
        lambda o: o["outputs"][0]["text"],
    ),
    "mistral-large": (
        "mistral.mistral-large-2407-v1:0",
        lambda t: {"messages": [{"role": "user", "content": t}], "max_tokens": 100},
        lambda o: o["choices"][0]["message"]["content"],
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batch_and_runtime_give_the_same_deterministic_reply(
    family, runtime, submit, put_jsonl, finish, outputs
):
    model_id, body, reply_of = FAMILIES[family]
    records = [{"recordId": f"r{i}", "modelInput": body(f"tell me about {i}")} for i in range(100)]
    arn = submit(put_jsonl(records), model_id=model_id)
    assert finish(arn)["status"] == "Completed"
    by_id = {r["recordId"]: r["modelOutput"] for r in outputs(arn)}
    assert reply_of(by_id["r0"]) == "Emulated reply to: tell me about 0"

    on_demand = json.loads(
        runtime.invoke_model(modelId=model_id, body=json.dumps(body("tell me about 0")))["body"].read()
    )
    on_demand.pop("id", None)  # Claude's message id derives from the record id
    assert on_demand == {k: v for k, v in by_id["r0"].items() if k != "id"}


def test_claude_shape_tokens_and_truncation(runtime):
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 3,
        "system": "abcd",
        "messages": [{"role": "user", "content": "12345678"}],
    }
    out = json.loads(
        runtime.invoke_model(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=json.dumps(body))[
            "body"
        ].read()
    )
    assert set(out) >= {"id", "type", "role", "content", "stop_reason", "usage"}
    assert (out["type"], out["role"], out["stop_reason"]) == ("message", "assistant", "max_tokens")
    assert out["content"] == [{"type": "text", "text": "Emulated rep"}]  # 4 bytes x 3 tokens
    assert out["usage"] == {"input_tokens": math.ceil(12 / 4), "output_tokens": 3}


def test_nova_usage_and_stop_reason(runtime):
    body = {"messages": _user("hello"), "system": [{"text": "sys"}]}
    out = json.loads(
        runtime.invoke_model(modelId="us.amazon.nova-pro-v1:0", body=json.dumps(body))["body"].read()
    )
    assert out["stopReason"] == "end_turn"
    assert out["usage"] == {
        "inputTokens": 2,
        "outputTokens": math.ceil(len("Emulated reply to: hello") / 4),
        "totalTokens": 2 + 6,
    }


def test_converse_runtime_and_converse_type_jobs(runtime, submit, put_jsonl, finish, outputs):
    answer = runtime.converse(
        modelId="us.anthropic.claude-3-5-haiku-20241022-v1:0",
        messages=_user("hi"),
        inferenceConfig={"maxTokens": 50},
    )
    assert answer["output"]["message"]["content"][0]["text"] == "Emulated reply to: hi"
    assert answer["stopReason"] == "end_turn" and answer["usage"]["totalTokens"] > 0

    records = [
        {"recordId": f"c{i}", "modelInput": {"messages": _user(f"q{i}"), "inferenceConfig": {"maxTokens": 9}}}
        for i in range(100)
    ]
    arn = submit(
        put_jsonl(records),
        model_id="us.anthropic.claude-3-5-haiku-20241022-v1:0",
        modelInvocationType="Converse",
    )
    assert finish(arn)["status"] == "Completed"
    line = next(r for r in outputs(arn) if r["recordId"] == "c5")
    assert line["modelOutput"]["output"]["message"] == {
        "content": [{"text": "Emulated reply to: q5"}],
        "role": "assistant",
    }


def test_titan_v2_embeddings(runtime, submit, put_jsonl, finish, outputs):
    model = "amazon.titan-embed-text-v2:0"

    def embed(**body):
        return json.loads(runtime.invoke_model(modelId=model, body=json.dumps(body))["body"].read())

    out = embed(inputText="hello world")
    assert len(out["embedding"]) == 1024 and out["embeddingsByType"]["float"] == out["embedding"]
    assert out["inputTextTokenCount"] == math.ceil(len("hello world") / 4)
    assert np.linalg.norm(out["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert embed(inputText="hello world")["embedding"] == out["embedding"]
    assert embed(inputText="hello there")["embedding"] != out["embedding"]
    assert len(embed(inputText="x", dimensions=256)["embedding"]) == 256
    assert np.linalg.norm(embed(inputText="x", dimensions=512, normalize=False)["embedding"]) > 2
    with pytest.raises(runtime.exceptions.ValidationException, match="dimensions"):
        embed(inputText="x", dimensions=100)

    records = [
        {"recordId": f"e{i}", "modelInput": {"inputText": f"text {i}", "dimensions": 256}} for i in range(99)
    ]
    records.append({"recordId": "bad", "modelInput": {"inputText": "x", "dimensions": 300}})
    arn = submit(put_jsonl(records), model_id=model)
    job = finish(arn)
    assert (job["status"], job["errorRecordCount"]) == ("Completed", 1)
    by_id = {r["recordId"]: r for r in outputs(arn)}
    assert by_id["bad"]["error"]["errorCode"] == 400
    assert by_id["e1"]["modelOutput"]["embedding"] == embed(inputText="text 1", dimensions=256)["embedding"]


@pytest.mark.parametrize(
    ("model_input", "message"),
    [
        (
            {"anthropic_version": "bedrock-2023-05-31", "messages": [{"role": "user", "content": "x"}]},
            "required key [max_tokens] not found",
        ),
        ({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5}, "required key [messages] not found"),
        ({"anthropic_version": "bedrock-2023-05-31", "max_tokens": "many", "messages": []}, "#/max_tokens"),
        (
            {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 5,
                "modelId": "x",
                "messages": [{"role": "user", "content": "x"}],
            },
            "extraneous key [modelId]",
        ),
    ],
)
def test_a_record_the_model_would_reject_is_a_400_not_a_job_failure(
    model_input, message, runtime, submit, put_jsonl, finish, outputs
):
    records = [claude_record(i) for i in range(100)] + [{"recordId": "odd", "modelInput": model_input}]
    arn = submit(put_jsonl(records))
    job = finish(arn)
    assert (job["status"], job["successRecordCount"], job["errorRecordCount"]) == ("Completed", 100, 1)
    odd = next(r for r in outputs(arn) if r["recordId"] == "odd")
    assert odd["error"]["errorCode"] == 400 and message in odd["error"]["errorMessage"]
    assert odd["modelInput"] == model_input

    with pytest.raises(runtime.exceptions.ValidationException, match="Malformed input request"):
        runtime.invoke_model(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=json.dumps(model_input))


def test_runtime_errors(runtime):
    with pytest.raises(runtime.exceptions.ValidationException, match="model identifier is invalid"):
        runtime.invoke_model(modelId="acme.gpt-9000-v1:0", body=b"{}")
    with pytest.raises(runtime.exceptions.ValidationException, match="Malformed input request"):
        runtime.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=b"not json")
    with pytest.raises(runtime.exceptions.ValidationException, match="streaming"):
        runtime.invoke_model_with_response_stream(
            modelId="meta.llama3-8b-instruct-v1:0", body=b'{"prompt":"x"}'
        )
    with pytest.raises(runtime.exceptions.ValidationException, match="doesn't support the model"):
        runtime.converse(modelId="amazon.titan-embed-text-v2:0", messages=_user("x"))


def test_runtime_throttling(knobs, runtime):
    knobs(throttle_rate={"InvokeModel": 1.0})
    with pytest.raises(runtime.exceptions.ThrottlingException):
        runtime.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=b'{"prompt":"x"}')
    assert (
        runtime.converse(modelId="us.amazon.nova-lite-v1:0", messages=_user("x"))["stopReason"] == "end_turn"
    )
