"""The columnar record pipeline on its own: validation, byte-exact truncation, and odd records isolated,
not fatal."""

from __future__ import annotations

import json

import pytest

from emulator.families import INPUT_SHAPES, Family, resolve_family
from emulator.records import BadLine, generate, output_lines, validate


def _claude(record_id: str, text: str, max_tokens: int = 100) -> bytes:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
    return json.dumps({"recordId": record_id, "modelInput": body}).encode()


def test_replies_are_cut_at_4_bytes_per_token_on_a_character_boundary():
    df = generate([_claude("a", "ééééééé", max_tokens=6)], Family.CLAUDE, "anthropic.claude-3-haiku-v1:0")
    reply = json.loads(df["output"][0])["content"][0]["text"]
    assert reply == "Emulated reply to: éé"  # 19 + 4 bytes <= 24; a third é would need 25
    assert df["output_tokens"][0] == 6


def test_one_odd_record_among_many_is_isolated_by_bisection():
    lines = [_claude(f"r{i}", f"p{i}") for i in range(1000)]
    lines[617] = b'{"recordId": "r617", "modelInput": {"anthropic_version": "x", "max_tokens": {"a": 1}}}'
    df = generate(lines, Family.CLAUDE, "anthropic.claude-3-haiku-v1:0")
    assert df["error_code"].to_list().count(400) == 1
    assert df.row(617, named=True)["record_id"] == "r617"
    assert "#/max_tokens" in df.row(617, named=True)["error_message"]
    parsed = [json.loads(line) for line in output_lines(df)]
    assert [p["recordId"] for p in parsed] == [f"r{i}" for i in range(1000)]


def test_records_without_an_id_get_one():
    line = json.dumps({"modelInput": {"prompt": "x"}}).encode()
    parsed = json.loads(output_lines(generate([line], Family.LLAMA, "meta.llama3-8b"))[0])
    assert (
        parsed["recordId"] == "RECORD0000001"
        and parsed["modelOutput"]["generation"] == "Emulated reply to: x"
    )


def test_families_are_recognised_from_ids_profiles_and_arns():
    cases = {
        "anthropic.claude-3-haiku-20240307-v1:0": Family.CLAUDE,
        "global.anthropic.claude-sonnet-4-20250514-v1:0": Family.CLAUDE,
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0": Family.NOVA,
        "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.meta.llama3-2-1b-instruct-v1:0": (
            Family.LLAMA
        ),
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/"
        "apac.amazon.titan-embed-text-v2:0": Family.TITAN_EMBED_V2,
        "mistral.mistral-large-2407-v1:0": Family.MISTRAL_CHAT,
        "mistral.mixtral-8x7b-instruct-v0:1": Family.MISTRAL_PROMPT,
        "cohere.command-r-v1:0": None,
    }
    assert {m: resolve_family(m) for m in cases} == cases
    assert resolve_family("meta.llama3-8b-instruct-v1:0", "Converse") is Family.CONVERSE


def test_validation_skips_blank_lines_and_reads_crlf_files():
    data = b"\r\n".join([_claude("a", "x"), b"", b"   ", _claude("b", "y")]) + b"\r\n"
    lines, features = validate(data, INPUT_SHAPES[Family.CLAUDE])
    assert features["record_id"].to_list() == ["a", "b"] and len(lines) == 2
    assert features["error"].null_count() == 2


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"recordId": "x"} {"recordId": "y"}', "unexpected content"),
        (b'{"recordId": "\xff"}', "UTF-8"),
        (b'{"recordId": "a\x00b"}', "control character"),
        (b"[1, 2]", "one JSON object"),
    ],
)
def test_a_line_that_is_not_one_json_object_is_named_by_number(bad: bytes, reason: str):
    data = b"\n".join([_claude("a", "x"), _claude("b", "y"), bad, _claude("c", "z")])
    with pytest.raises(BadLine) as caught:
        validate(data, INPUT_SHAPES[Family.CLAUDE])
    assert caught.value.number == 3 and reason in caught.value.reason


def test_records_no_shape_fits_are_errors_not_a_bad_file():
    odd = b'{"recordId": "odd", "modelInput": {"max_tokens": "many"}}'
    _, features = validate(b"\n".join([_claude("a", "x"), odd]), INPUT_SHAPES[Family.CLAUDE])
    assert features["error"][0] is None and "#/max_tokens" in features["error"][1]


def test_output_lines_are_json_for_empty_objects_blank_padding_and_missing_ids():
    lines = [b"{ }", b'{"modelInput": {"prompt": "x"}}  ', b'{"recordId": "own", "modelInput": {"prompt": "y"}}']
    parsed = [json.loads(line) for line in output_lines(generate(lines, Family.LLAMA, "meta.llama3-8b"))]
    assert parsed[0]["recordId"] == "RECORD0000001" and parsed[0]["error"]["errorCode"] == 400
    assert parsed[1]["recordId"] == "RECORD0000002" and parsed[1]["modelInput"] == {"prompt": "x"}
    assert parsed[2]["recordId"] == "own" and parsed[2]["modelOutput"]["generation"] == "Emulated reply to: y"
