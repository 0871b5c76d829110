"""Schema requests: forced tool calls (Claude, Nova, Converse) and schema lines (any text family) get
deterministic answers that follow the schema; `invalid_output_rate` breaks that share in four ways."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import polars as pl
import pytest

from emulator.families import Family
from emulator.records import generate, output_lines
from emulator.structured import PLAIN_TEXT, Breakage
from tasks.core.schema import OutputSchema

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number"},
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "kind": {"enum": ["person", "org"]}},
                "required": ["name", "kind"],
            },
        },
        "urgent": {"type": "boolean"},
        "stars": {"type": "integer"},
    },
    "required": ["label", "confidence"],
}
CHECK = OutputSchema.parse(SCHEMA)
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-1-8b-instruct-v1:0"


def claude_input(text: str, tool: str | None = "record", listed: str = "record") -> dict[str, Any]:
    body: dict[str, Any] = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "tools": [{"name": listed, "description": "Record the answer.", "input_schema": SCHEMA}],
    }
    if tool:
        body["tool_choice"] = {"type": "tool", "name": tool}
    return body


def tool_config(tool: str = "record") -> dict[str, Any]:
    return {
        "tools": [{"toolSpec": {"name": "record", "description": "d", "inputSchema": {"json": SCHEMA}}}],
        "toolChoice": {"tool": {"name": tool}},
    }


def nova_input(text: str) -> dict[str, Any]:
    return {
        "schemaVersion": "messages-v1",
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 200},
        "toolConfig": tool_config(),
    }


def llama_input(text: str, max_gen_len: int = 400) -> dict[str, Any]:
    prompt = f"{text}\nReply with one JSON object.\nJSON Schema: {json.dumps(SCHEMA)}<|eot_id|>assistant\n\n"
    return {"prompt": prompt, "max_gen_len": max_gen_len}


def _lines(make, n: int) -> list[bytes]:
    return [json.dumps({"recordId": f"r{i:04d}", "modelInput": make(f"text {i}")}).encode() for i in range(n)]


def _outputs(family: Family, model: str, lines: list[bytes], breakage: Breakage | None = None) -> list[dict]:
    return [json.loads(line) for line in output_lines(generate(lines, family, model, breakage=breakage))]


def _answer(family: Family, output: dict[str, Any]) -> str:
    """The answer as JSON text (the tool input re-encoded), or the reply text."""
    if family is Family.CLAUDE:
        block = output["content"][0]
        return json.dumps(block["input"]) if block["type"] == "tool_use" else block["text"]
    if family is Family.LLAMA:
        return output["generation"]
    block = output["output"]["message"]["content"][0]
    return json.dumps(block["toolUse"]["input"]) if "toolUse" in block else block["text"]


@pytest.mark.parametrize(
    ("family", "model", "make"),
    [(Family.CLAUDE, CLAUDE, claude_input), (Family.NOVA, NOVA, nova_input), (Family.LLAMA, LLAMA, llama_input)],
)
def test_schema_requests_get_valid_deterministic_answers(family, model, make) -> None:
    lines = _lines(make, 50)
    first = _outputs(family, model, lines)
    assert first == _outputs(family, model, lines)  # deterministic
    answers = [_answer(family, line["modelOutput"]) for line in first]
    decoded = CHECK.decode(pl.Series(answers))
    assert decoded["error"].null_count() == 50, decoded["error"].drop_nulls().to_list()
    labels = decoded["output"].struct.field("label").cast(pl.String).to_list()
    assert set(labels) == {"positive", "negative", "neutral"}  # varied, not one constant
    if family is Family.CLAUDE:
        out = first[0]["modelOutput"]
        assert out["stop_reason"] == "tool_use"
        assert out["content"][0]["name"] == "record" and out["content"][0]["id"].startswith("toolu_")
    elif family is Family.NOVA:
        out = first[0]["modelOutput"]
        assert out["stopReason"] == "tool_use"
        assert out["output"]["message"]["content"][0]["toolUse"]["name"] == "record"
    else:
        assert first[0]["modelOutput"]["stop_reason"] == "stop"


def test_tool_definitions_count_as_input_and_the_call_as_output() -> None:
    plain = {**claude_input("same text")}
    del plain["tools"], plain["tool_choice"]
    with_tool = _outputs(Family.CLAUDE, CLAUDE, _lines(lambda t: claude_input("same text"), 1))[0]["modelOutput"]
    without = _outputs(Family.CLAUDE, CLAUDE, _lines(lambda t: plain, 1))[0]["modelOutput"]
    tools_bytes = len(json.dumps(claude_input("x")["tools"], separators=(",", ":")))
    added = with_tool["usage"]["input_tokens"] - without["usage"]["input_tokens"]
    assert abs(added - tools_bytes / 4) <= 1
    answer_bytes = len(json.dumps(with_tool["content"][0]["input"], separators=(",", ":")))
    assert with_tool["usage"]["output_tokens"] == (answer_bytes + 3) // 4


def test_unforced_tools_get_a_text_reply() -> None:
    out = _outputs(Family.CLAUDE, CLAUDE, _lines(lambda t: claude_input(t, tool=None), 1))[0]["modelOutput"]
    assert out["content"][0] == {"type": "text", "text": "Emulated reply to: text 0"}


@pytest.mark.parametrize(
    ("family", "model", "make"),
    [
        (Family.CLAUDE, CLAUDE, lambda t: claude_input(t, tool="other")),
        (Family.NOVA, NOVA, lambda t: {**nova_input(t), "toolConfig": tool_config("other")}),
    ],
)
def test_a_forced_tool_that_is_not_given_is_a_400(family, model, make) -> None:
    line = _outputs(family, model, _lines(make, 1))[0]
    assert line["error"]["errorCode"] == 400
    assert "forced tool is not one of the tools given" in line["error"]["errorMessage"]


@pytest.mark.parametrize(
    ("family", "model", "make"),
    [(Family.CLAUDE, CLAUDE, claude_input), (Family.NOVA, NOVA, nova_input), (Family.LLAMA, LLAMA, llama_input)],
)
def test_invalid_output_rate_breaks_that_share_in_four_ways(family, model, make) -> None:
    lines = _lines(make, 600)
    outputs = _outputs(family, model, lines, Breakage(0.3, 0, "job-a"))
    answers = [_answer(family, line["modelOutput"]) for line in outputs]
    errors = CHECK.decode(pl.Series(answers))["error"].drop_nulls().to_list()
    assert 0.22 < len(errors) / 600 < 0.38
    kinds = Counter(
        "plain" if e.startswith("not a JSON object") else
        "missing" if "required field missing" in e else
        "enum" if "is not one of" in e else
        "type" if "expected" in e else e
        for e in errors
    )
    assert set(kinds) == {"plain", "missing", "enum", "type"}, kinds
    assert min(kinds.values()) >= 0.1 * len(errors)
    if family is Family.CLAUDE:
        plain = [o["modelOutput"] for o in outputs if o["modelOutput"]["content"][0]["type"] == "text"]
        assert plain and all(p["stop_reason"] == "end_turn" for p in plain)
        assert plain[0]["content"][0]["text"] == PLAIN_TEXT
    # Another job name (a resubmission) draws again: the broken records are not the same ones.
    again = _outputs(family, model, lines, Breakage(0.3, 0, "job-b"))
    broken_a = {o["recordId"] for o, a in zip(outputs, answers, strict=True) if not _valid(a)}
    broken_b = {o["recordId"] for o in again if not _valid(_answer(family, o["modelOutput"]))}
    assert len(broken_a & broken_b) < 0.5 * len(broken_a)


def _valid(answer: str) -> bool:
    return CHECK.decode(pl.Series([answer]))["error"][0] is None


def test_batch_job_and_runtime_answer_schemas(knobs, runtime, submit, put_jsonl, finish, outputs) -> None:
    knobs(invalid_output_rate=0.0)
    records = [{"recordId": f"r{i:04d}", "modelInput": claude_input(f"text {i}")} for i in range(100)]
    job = submit(put_jsonl(records), model_id=CLAUDE)
    assert finish(job)["status"] == "Completed"
    by_id = {line["recordId"]: line["modelOutput"] for line in outputs(job)}
    on_demand = json.loads(
        runtime.invoke_model(modelId=CLAUDE, body=json.dumps(claude_input("text 7")))["body"].read()
    )
    assert on_demand["content"][0]["input"] == by_id["r0007"]["content"][0]["input"]
    converse = runtime.converse(
        modelId=NOVA,
        messages=[{"role": "user", "content": [{"text": "text 7"}]}],
        inferenceConfig={"maxTokens": 200},
        toolConfig=tool_config(),
    )
    assert converse["stopReason"] == "tool_use"
    call = converse["output"]["message"]["content"][0]["toolUse"]
    assert call["name"] == "record" and _valid(json.dumps(call["input"]))


def test_runtime_retries_of_the_same_body_draw_again(knobs, runtime) -> None:
    knobs(invalid_output_rate=0.5)
    body = json.dumps(claude_input("the same request"))

    def answers() -> list[bool]:
        return [
            _valid(_answer(Family.CLAUDE, json.loads(runtime.invoke_model(modelId=CLAUDE, body=body)["body"].read())))
            for _ in range(12)
        ]

    first = answers()
    assert 0 < sum(first) < 12  # some calls valid, some not: a retry can fix an invalid answer
    knobs(invalid_output_rate=0.5)  # setting the profile restarts the seeded draws
    assert answers() == first
