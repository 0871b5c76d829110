"""Model families: request lines match Bedrock's per-family bodies; output lines parse to result rows."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.formats import (
    FAMILIES,
    RETRYABLE_ERROR_CODES,
    InferenceSettings,
    UnknownModelError,
    build_lines,
    invoke_request,
    parse_invoke_response,
    parse_output_lines,
    resolve_family,
)
from tasks.core.templates import PromptTemplate


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude"),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude"),
        ("arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0", "claude"),
        ("arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0", "nova"),
        ("apac.amazon.nova-pro-v1:0", "nova"),
        ("meta.llama3-1-70b-instruct-v1:0", "llama"),
        ("us.meta.llama3-3-70b-instruct-v1:0", "llama"),
        ("mistral.mistral-7b-instruct-v0:2", "mistral"),
        ("mistral.mixtral-8x7b-instruct-v0:1", "mistral"),
        ("mistral.mistral-large-2402-v1:0", "mistral"),
        ("mistral.mistral-large-2407-v1:0", "mistral_chat"),
        ("amazon.titan-embed-text-v2:0", "titan_embed"),
    ],
)
def test_resolve_family_from_ids_profiles_and_arns(model_id: str, family: str) -> None:
    assert resolve_family(model_id).name == family


def test_converse_invocation_serves_any_chat_model_but_not_embeddings() -> None:
    assert resolve_family("cohere.command-r-plus-v1:0", "Converse").name == "converse"
    assert resolve_family("anthropic.claude-3-haiku-20240307-v1:0", "converse").name == "converse"
    with pytest.raises(UnknownModelError, match="embedding"):
        resolve_family("amazon.titan-embed-text-v2:0", "Converse")


def test_unknown_model_lists_families_and_the_converse_route() -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_family("cohere.command-r-plus-v1:0")
    message = str(err.value)
    for name in ("claude", "nova", "llama", "mistral", "titan_embed"):
        assert name in message
    assert "--invocation-type Converse" in message


def test_application_inference_profile_arn_names_no_family() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    with pytest.raises(UnknownModelError, match="Converse"):
        resolve_family(arn)
    assert resolve_family(arn, "Converse").name == "converse"


def _bodies(family: str, s: InferenceSettings, prompts: list[str]) -> list[dict]:
    frame = pl.DataFrame({"record_id": [f"id{i}" for i in range(len(prompts))], "prompt": prompts})
    out = build_lines(frame.lazy(), FAMILIES[family], s).collect()
    records = [json.loads(line) for line in out["line"]]
    assert [r["recordId"] for r in records] == list(frame["record_id"])
    return [r["modelInput"] for r in records]


def test_claude_body_with_system_and_sampling() -> None:
    s = InferenceSettings(max_tokens=300, temperature=0.2, top_p=0.9, system="Be brief.")
    (body,) = _bodies("claude", s, ["Tell me a joke"])
    assert body == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 300,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me a joke"}]}],
        "temperature": 0.2,
        "top_p": 0.9,
    }


def test_unset_options_are_omitted_not_sent_as_null() -> None:
    (body,) = _bodies("claude", InferenceSettings(), ["x"])
    assert set(body) == {"anthropic_version", "max_tokens", "messages"}
    (nova,) = _bodies("nova", InferenceSettings(), ["x"])
    assert "system" not in nova and nova["inferenceConfig"] == {"maxTokens": 512}


def test_nova_and_converse_bodies() -> None:
    s = InferenceSettings(max_tokens=64, temperature=0.5, system="sys")
    (nova,) = _bodies("nova", s, ["hi"])
    assert nova == {
        "schemaVersion": "messages-v1",
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "sys"}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.5},
    }
    (converse,) = _bodies("converse", s, ["hi"])
    assert converse == {k: v for k, v in nova.items() if k != "schemaVersion"}


def test_llama_mistral_and_titan_bodies() -> None:
    s = InferenceSettings(max_tokens=99, system="sys", dimensions=512, normalize=False)
    (llama,) = _bodies("llama", s, ["Q?"])
    assert llama["max_gen_len"] == 99
    assert llama["prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys")
    assert "user<|end_header_id|>\n\nQ?<|eot_id|>" in llama["prompt"]
    assert llama["prompt"].endswith("assistant<|end_header_id|>\n\n")
    (mistral,) = _bodies("mistral", s, ["Q?"])
    assert mistral == {"prompt": "<s>[INST] sys\n\nQ? [/INST]", "max_tokens": 99}
    (chat,) = _bodies("mistral_chat", s, ["Q?"])
    assert chat["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?"}]
    (titan,) = _bodies("titan_embed", s, ["embed me"])
    assert titan == {"inputText": "embed me", "dimensions": 512, "normalize": False}


def test_titan_rejects_unsupported_dimensions() -> None:
    with pytest.raises(ValueError, match="256, 512 or 1024"):
        _bodies("titan_embed", InferenceSettings(dimensions=300), ["x"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=5))
def test_any_text_round_trips_through_a_line_and_line_bytes_is_exact(prompts: list[str]) -> None:
    frame = pl.DataFrame({"record_id": [f"r{i}" for i in range(len(prompts))], "prompt": prompts})
    out = build_lines(frame.lazy(), FAMILIES["claude"], InferenceSettings()).collect()
    for text, line, size in zip(prompts, out["line"], out["line_bytes"], strict=True):
        assert "\n" not in line  # one record per line, whatever the prompt holds
        assert json.loads(line)["modelInput"]["messages"][0]["content"][0]["text"] == text
        assert size == len(line.encode("utf-8")) + 1


def test_settings_precedence_explicit_then_template_then_default() -> None:
    template = PromptTemplate.from_text("t", "{x}", system="tmpl sys", max_tokens=64, temperature=0.9)
    s = InferenceSettings.from_options(template, max_tokens=None, temperature=0.1)
    assert (s.max_tokens, s.temperature, s.system, s.top_p) == (64, 0.1, "tmpl sys", None)
    assert InferenceSettings.from_options(None).max_tokens == 512
    assert InferenceSettings(system="mine").with_template(template).system == "mine"
    assert InferenceSettings().with_template(template).temperature == 0.9


# ------------------------------------------------------------------------------------------- parsing

OUTPUTS = {
    "claude": {
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 11, "output_tokens": 2},
    },
    "nova": {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello world"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 11, "outputTokens": 2, "totalTokens": 13},
    },
    "llama": {
        "generation": "Hello world",
        "prompt_token_count": 11,
        "generation_token_count": 2,
        "stop_reason": "stop",
    },
    "mistral": {"outputs": [{"text": "Hello world", "stop_reason": "stop"}]},
    "mistral_chat": {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "stop_reason": "stop"}
        ]
    },
}
OUTPUTS["converse"] = OUTPUTS["nova"]
TOKENS = {"mistral": (None, None), "mistral_chat": (None, None)}
STOPS = {"llama": "stop", "mistral": "stop", "mistral_chat": "stop"}


def _line(record_id: str, **fields: object) -> str:
    return json.dumps({"recordId": record_id, "modelInput": {"echo": "x" * 50}, **fields})


@pytest.mark.parametrize("family", sorted(OUTPUTS))
def test_text_outputs_parse_per_family(family: str) -> None:
    lines = pl.DataFrame(
        {
            "line": [
                _line("a", modelOutput=OUTPUTS[family]),
                _line("b", error={"errorCode": 400, "errorMessage": "Malformed input request"}),
            ]
        }
    )
    out = parse_output_lines(lines, FAMILIES[family])
    ok, bad = out.rows(named=True)
    assert ok["record_id"] == "a" and ok["response"] == "Hello world" and ok["error_code"] is None
    assert (ok["input_tokens"], ok["output_tokens"]) == TOKENS.get(family, (11, 2))
    assert ok["stop_reason"] == STOPS.get(family, "end_turn")
    assert bad["record_id"] == "b" and bad["response"] is None
    assert (bad["error_code"], bad["error_message"]) == ("400", "Malformed input request")


def test_embedding_outputs_with_errors_do_not_crash() -> None:
    lines = pl.DataFrame(
        {
            "line": [
                _line("a", modelOutput={"embedding": [0.25, -0.5], "inputTextTokenCount": 4}),
                _line("b", error={"errorCode": 400, "errorMessage": "Input is too long"}),
                _line("c", modelOutput={"embedding": [1.0, 0.0], "inputTextTokenCount": 2}),
            ]
        }
    )
    out = parse_output_lines(lines, FAMILIES["titan_embed"])
    assert out.schema["embedding"] == pl.List(pl.Float32)
    assert out["embedding"].to_list() == [[0.25, -0.5], None, [1.0, 0.0]]
    assert out["error_code"].to_list() == [None, "400", None]
    assert out["input_tokens"].to_list() == [4, None, 2]


def test_malformed_lines_are_kept_as_errors() -> None:
    good = _line("ok", modelOutput=OUTPUTS["claude"])
    lines = pl.DataFrame(
        {
            "line": [
                good,
                '{"recordId":"cut","modelOutput":{"content":[{"type":"te',  # truncated: id recovered
                "not json at all",  # nothing to attribute
                '{"recordId":"shape","modelOutput":{"content":"not a list"}}',  # JSON of the wrong shape
                '{"recordId":"empty"}',  # neither output nor error
                "",  # blank lines are not records
            ]
        }
    )
    out = parse_output_lines(lines, FAMILIES["claude"])
    assert out["record_id"].to_list() == ["ok", "cut", None, "shape", "empty"]
    assert out["error_code"].to_list() == [None, *["malformed_output"] * 4]
    assert out["error_message"][1].startswith('malformed output line: {"recordId":"cut"')
    assert out["error_message"][2] == "malformed output line: not json at all"
    long_line = "x" * 5000
    (row,) = parse_output_lines(pl.DataFrame({"line": [long_line]}), FAMILIES["claude"]).rows(named=True)
    assert len(row["error_message"]) < 300  # the raw line is kept, truncated


def test_numeric_or_text_error_codes_come_out_as_text() -> None:
    lines = pl.DataFrame(
        {
            "line": [
                _line("a", error={"errorCode": 429, "errorMessage": "x"}),
                _line("b", error={"errorCode": "500"}),
            ]
        }
    )
    out = parse_output_lines(lines, FAMILIES["nova"])
    assert out["error_code"].to_list() == ["429", "500"]
    assert {
        "429",
        "500",
        "missing",
        "expired",
    } <= RETRYABLE_ERROR_CODES and "400" not in RETRYABLE_ERROR_CODES


def test_on_demand_request_matches_the_batch_body() -> None:
    s = InferenceSettings(max_tokens=50, system="sys")
    op, kwargs = invoke_request(FAMILIES["claude"], s, "hello")
    assert op == "invoke_model" and set(kwargs) == {"body"}
    assert json.loads(kwargs["body"]) == _bodies("claude", s, ["hello"])[0]
    op, kwargs = invoke_request(FAMILIES["converse"], s, "hello")
    assert op == "converse"
    assert kwargs == {
        "messages": [{"role": "user", "content": [{"text": "hello"}]}],
        "system": [{"text": "sys"}],
        "inferenceConfig": {"maxTokens": 50},
    }


def test_on_demand_responses_parse_like_batch_outputs() -> None:
    body = io.BytesIO(json.dumps(OUTPUTS["claude"]).encode())
    row = parse_invoke_response(FAMILIES["claude"], {"body": body, "contentType": "application/json"})
    assert row == {
        "response": "Hello world",
        "error_code": None,
        "error_message": None,
        "input_tokens": 11,
        "output_tokens": 2,
        "stop_reason": "end_turn",
    }
    converse = {**OUTPUTS["nova"], "ResponseMetadata": {"HTTPStatusCode": 200}, "metrics": {"latencyMs": 5}}
    assert parse_invoke_response(FAMILIES["converse"], converse)["response"] == "Hello world"
    embedding = {"body": json.dumps({"embedding": [0.5], "inputTextTokenCount": 1}).encode()}
    assert parse_invoke_response(FAMILIES["titan_embed"], embedding)["embedding"] == [0.5]
