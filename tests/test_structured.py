"""Structured outputs through the library: request lines force the schema per family, output files decode
into a typed `output` column with `invalid_output` rows, on-demand calls and cached answers agree.

Output files are made by the emulator's own record pipeline (no server), so both sides of the format are
exercised by the code that runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pytest

from emulator.families import Family
from emulator.records import generate, output_lines
from emulator.structured import Breakage
from tasks.core import cost
from tasks.core.answers import RequestScope
from tasks.core.collect import apply_repairs, collect_lines, conform, echo_mismatches
from tasks.core.formats import (
    RETRYABLE_ERROR_CODES,
    InferenceSettings,
    build_lines,
    invoke_request,
    model_input_dtype,
    parse_invoke_response,
    parse_output_bytes,
    parse_output_lines,
    resolve_family,
)
from tasks.core.schema import SCHEMA_LINE, OutputSchema
from tasks.core.templates import TemplateError, load_template

SENTIMENT = load_template("sentiment_classifier")
ENTITIES = load_template("entity_extraction")
MODELS = {
    "claude": ("anthropic.claude-3-haiku-20240307-v1:0", Family.CLAUDE, "InvokeModel"),
    "nova": ("us.amazon.nova-lite-v1:0", Family.NOVA, "InvokeModel"),
    "converse": ("cohere.command-r-plus-v1:0", Family.CONVERSE, "Converse"),
    "llama": ("meta.llama3-1-8b-instruct-v1:0", Family.LLAMA, "InvokeModel"),
    "mistral": ("mistral.mistral-7b-instruct-v0:2", Family.MISTRAL_PROMPT, "InvokeModel"),
    "mistral_chat": ("mistral.mistral-large-2407-v1:0", Family.MISTRAL_CHAT, "InvokeModel"),
}


def _family(name: str, template=ENTITIES):
    model, _, invocation = MODELS[name]
    return resolve_family(model, invocation).structured(template.output_schema)


def _lines(name: str, n: int, template=ENTITIES) -> pl.DataFrame:
    family = _family(name, template)
    settings = InferenceSettings.resolve(template, family)
    rows = pl.DataFrame(
        {"record_id": [f"r{i:04d}" for i in range(n)], "prompt": [f"Ada met Bob in Paris ({i})" for i in range(n)]}
    )
    return build_lines(rows.lazy(), family, settings).collect()


def _output_file(name: str, n: int, rate: float = 0.0, template=ENTITIES) -> bytes:
    model, emulated, _ = MODELS[name]
    lines = _lines(name, n, template)["line"]
    out = generate(lines, emulated, model, breakage=Breakage(rate, 0, "job") if rate else None)
    return output_lines(out, end="\n").str.join("").item().encode()


# --------------------------------------------------------------------------------------------- requests
def test_claude_forces_a_tool_call() -> None:
    body = orjson.loads(_lines("claude", 1)["line"][0])["modelInput"]
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert body["tools"] == [
        {"name": "structured_output", "description": "Record the answer in the required structure.",
         "input_schema": json.loads(ENTITIES.output_schema)}
    ]
    assert body["messages"][0]["content"][0]["text"] == "Ada met Bob in Paris (0)"  # the prompt is untouched


@pytest.mark.parametrize("name", ["nova", "converse"])
def test_nova_and_converse_force_a_tool_through_tool_config(name: str) -> None:
    body = orjson.loads(_lines(name, 1)["line"][0])["modelInput"]
    config = body["toolConfig"]
    assert config["toolChoice"] == {"tool": {"name": "structured_output"}}
    assert config["tools"][0]["toolSpec"]["inputSchema"] == {"json": json.loads(ENTITIES.output_schema)}
    assert ("schemaVersion" in body) == (name == "nova")


@pytest.mark.parametrize("name", ["llama", "mistral", "mistral_chat"])
def test_families_without_tools_get_the_schema_as_instructions(name: str) -> None:
    body = orjson.loads(_lines(name, 1)["line"][0])["modelInput"]
    text = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
    schema = OutputSchema.parse(ENTITIES.output_schema)
    assert "Ada met Bob in Paris (0)\n\n" + schema.instructions() in text
    line = next(part for part in text.splitlines() if part.startswith(SCHEMA_LINE))
    assert json.loads(line.removeprefix(SCHEMA_LINE).split("<|")[0].split(" [/INST]")[0]) == schema.schema
    assert "tools" not in body and "toolConfig" not in body


def test_without_a_schema_requests_are_unchanged() -> None:
    family = resolve_family(MODELS["claude"][0])
    plain = family.structured(None)
    assert plain == family
    settings = InferenceSettings.resolve(ENTITIES, family)
    rows = pl.DataFrame({"record_id": ["a"], "prompt": ["hi"]}).lazy()
    body = orjson.loads(build_lines(rows, family, settings).collect()["line"][0])["modelInput"]
    assert "tools" not in body


def test_an_embedding_family_refuses_a_schema() -> None:
    with pytest.raises(ValueError, match="needs a text model"):
        resolve_family("amazon.titan-embed-text-v2:0").structured(ENTITIES.output_schema)


def test_echoed_requests_match_the_sent_ones() -> None:
    """The join check re-encodes echoed modelInputs with the run's type: tools must survive it."""
    family = _family("claude")
    dtype = model_input_dtype(family, InferenceSettings.resolve(ENTITIES, family))
    scope = RequestScope(MODELS["claude"][0], "InvokeModel", dtype)
    lines = _lines("claude", 20)
    keys = lines.select("record_id", scope.key_expr(
        pl.col("line").str.json_path_match("$.modelInput")
    ).alias("__request_key"))
    data = _output_file("claude", 20)
    assert echo_mismatches(data, keys, scope, sample=20).len() == 0


# ---------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", sorted(MODELS))
def test_answers_decode_into_a_typed_output(name: str) -> None:
    family = _family(name)
    parsed = parse_output_bytes(_output_file(name, 40), family)
    assert parsed.columns[:3] == ["record_id", "response", "output"]
    assert parsed["output"].dtype == OutputSchema.parse(ENTITIES.output_schema).dtype
    assert parsed["error_code"].null_count() == 40, parsed["error_message"].drop_nulls().to_list()
    entities = parsed.select(pl.col("output").struct.field("entities").list.len()).to_series()
    assert entities.min() >= 1
    kinds = parsed.select(pl.col("output").struct.field("entities").explode().struct.field("kind")).to_series()
    assert kinds.dtype == pl.Enum(["person", "organization", "place"])
    assert json.loads(parsed["response"][0]) == parsed["output"][0]  # the raw answer stays in `response`


@pytest.mark.parametrize("name", ["claude", "nova", "llama"])
def test_invalid_answers_are_retryable_errors_naming_the_field(name: str) -> None:
    family = _family(name, SENTIMENT)
    data = _output_file(name, 400, rate=0.3, template=SENTIMENT)
    parsed = parse_output_bytes(data, family)
    bad = parsed.filter(pl.col("error_code").is_not_null())
    assert set(bad["error_code"]) == {"invalid_output"}
    assert "invalid_output" in RETRYABLE_ERROR_CODES
    assert 0.2 < bad.height / 400 < 0.4
    assert bad["output"].null_count() == bad.height
    messages = bad["error_message"].to_list()
    assert any(m.startswith("label: ") and "is not one of" in m for m in messages)
    assert any(m == "label: required field missing" for m in messages)
    assert any(m.startswith("label: expected string") for m in messages)
    assert any(m.startswith("not a JSON object") for m in messages)
    assert bad["response"].null_count() == 0  # what the model said is kept
    # The line-wise path (a file with a malformed line) gives the same rows (its JSONPath reader may round
    # a float's last bit: numbers are compared to 1e-12).
    lines = pl.DataFrame({"line": data.decode().splitlines()})
    again = parse_output_lines(lines, family, suspect=True)
    same = ["record_id", "error_code", "error_message", "input_tokens", "output_tokens", "stop_reason"]
    assert again.select(same).equals(parsed.select(same))
    unnest = [pl.col("output").struct.field("label"), pl.col("output").struct.field("confidence")]
    left, right = parsed.select(unnest), again.select(unnest)
    assert left["label"].equals(right["label"])
    assert ((left["confidence"] - right["confidence"]).abs().fill_null(0) < 1e-12).all()


def test_tool_inputs_with_escapes_come_out_exact() -> None:
    family = _family("claude", SENTIMENT)
    tricky = 'a "quoted" \\ back\\slash\n\ttab é'
    outputs = [
        {"recordId": f"r{i}", "modelOutput": {
            "content": [{"type": "tool_use", "id": "t", "name": "structured_output",
                         "input": {"label": "neutral", "confidence": 0.5, "note": tricky if i else "plain"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}}
        for i in range(3)
    ]
    data = b"\n".join(orjson.dumps(o) for o in outputs)
    parsed = parse_output_bytes(data, family)
    assert parsed["error_code"].null_count() == 3
    assert [json.loads(r)["note"] for r in parsed["response"]] == ["plain", tricky, tricky]


def test_a_cut_answer_says_so() -> None:
    family = _family("llama", SENTIMENT)
    output = {"generation": '{"label": "posi', "prompt_token_count": 5, "generation_token_count": 4,
              "stop_reason": "length"}
    line = orjson.dumps({"recordId": "r1", "modelOutput": output})
    parsed = parse_output_lines(pl.DataFrame({"line": [line.decode()]}), family)
    assert parsed["error_code"][0] == "invalid_output"
    assert parsed["error_message"][0].endswith("(the answer was cut at max_tokens: raise max_tokens)")


def test_collect_joins_output_and_conform_decodes_cached_answers() -> None:
    family = _family("nova", SENTIMENT)
    snapshot = pl.DataFrame({"record_id": [f"r{i:04d}" for i in range(30)], "input_text": ["x"] * 30})
    shard = collect_lines(_output_file("nova", 30, template=SENTIMENT), snapshot, family)
    frame = shard.frame
    assert frame.columns == ["record_id", "input_text", "response", "output", "error_code", "error_message",
                             "input_tokens", "output_tokens", "stop_reason"]
    assert frame["error_code"].null_count() == 30
    # The answer cache keeps `response` only; conform decodes `output` from it again, identically.
    cached = frame.drop("output")
    assert conform(cached, family, ["record_id", "input_text"]).equals(frame)
    broken = cached.with_columns(pl.lit('{"label": "great", "confidence": 1}').alias("response"))
    redone = conform(broken, family, ["record_id", "input_text"])
    assert set(redone["error_code"]) == {"invalid_output"}
    assert redone["error_message"][0] == "label: 'great' is not one of ['positive', 'negative', 'neutral']"


# -------------------------------------------------------------------------------------------- on-demand
def test_on_demand_requests_force_the_schema_and_responses_are_validated() -> None:
    family = _family("converse", SENTIMENT)
    settings = InferenceSettings.resolve(SENTIMENT, family)
    operation, kwargs = invoke_request(family, settings, "I loved it")
    assert operation == "converse" and kwargs["toolConfig"]["toolChoice"] == {"tool": {"name": "structured_output"}}
    good = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "x", "name": "structured_output", "input": {"label": "positive", "confidence": 0.9}}}
    ]}}, "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}
    row = parse_invoke_response(family, good)
    assert row["error_code"] is None and row["output"] == {"label": "positive", "confidence": 0.9}
    bad = json.loads(json.dumps(good))
    bad["output"]["message"]["content"][0]["toolUse"]["input"] = {"confidence": 0.9}
    row = parse_invoke_response(family, bad)
    assert (row["error_code"], row["error_message"]) == ("invalid_output", "label: required field missing")

    llama = _family("llama", SENTIMENT)
    _, kwargs = invoke_request(llama, InferenceSettings.resolve(SENTIMENT, llama), "I loved it")
    assert SCHEMA_LINE in json.loads(kwargs["body"])["prompt"]
    row = parse_invoke_response(llama, {"generation": "Positive!", "prompt_token_count": 1,
                                        "generation_token_count": 1, "stop_reason": "stop"})
    assert row["error_code"] == "invalid_output" and row["error_message"] == "not a JSON object: 'Positive!'"


# ---------------------------------------------------------------------------------------- templates, cost
def test_a_template_with_a_bad_schema_is_refused_naming_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "template: 'Rate {input_text}'\n"
        "output_schema:\n  type: object\n  properties:\n    score: {type: integer, minimum: 0}\n"
    )
    with pytest.raises(TemplateError) as info:
        load_template(path=path)
    assert str(path) in str(info.value)
    assert "output_schema.properties.score: unsupported keyword(s) ['minimum']" in str(info.value)


def test_the_estimate_counts_what_the_schema_adds() -> None:
    claude, llama = _family("claude", SENTIMENT), _family("llama", SENTIMENT)
    schema = OutputSchema.parse(SENTIMENT.output_schema)
    assert cost.schema_input_tokens(claude) == -(-len(schema.tool_json().encode()) // 4)
    assert cost.schema_input_tokens(llama) == -(-(len(schema.instructions().encode()) + 2) // 4)
    assert cost.schema_input_tokens(resolve_family(MODELS["claude"][0])) == 0
    base = cost.estimate(1000, 50_000, 100, MODELS["claude"][0], 1, 20)
    structured = cost.estimate(1000, 50_000, 100, MODELS["claude"][0], 1, 20, family=claude)
    assert structured.input_tokens == 50_000 + 1000 * cost.schema_input_tokens(claude)
    assert structured.input_cost_usd > base.input_cost_usd
    # The emulator bills the tools' JSON too: the estimate is within a token per record of it.
    out = parse_output_bytes(_output_file("claude", 5, template=SENTIMENT), claude)
    plain = parse_output_bytes(_output_file_plain(5), resolve_family(MODELS["claude"][0]))
    added = (out["input_tokens"] - plain["input_tokens"]).to_list()
    assert all(abs(a - cost.schema_input_tokens(claude)) <= 2 for a in added)


def _output_file_plain(n: int) -> bytes:
    model, emulated, _ = MODELS["claude"]
    family = resolve_family(model)
    settings = InferenceSettings.resolve(SENTIMENT, family)
    rows = pl.DataFrame(
        {"record_id": [f"r{i:04d}" for i in range(n)], "prompt": [f"Ada met Bob in Paris ({i})" for i in range(n)]}
    )
    lines = build_lines(rows.lazy(), family, settings).collect()["line"]
    return output_lines(generate(lines, emulated, model), end="\n").str.join("").item().encode()


def test_repaired_rows_get_their_output() -> None:
    """Repair results carry `response` only: the merged part decodes their `output` from it."""
    family = _family("claude", SENTIMENT)
    snapshot = pl.DataFrame({"record_id": [f"r{i:04d}" for i in range(200)], "input_text": ["x"] * 200})
    base = collect_lines(_output_file("claude", 200, rate=0.3, template=SENTIMENT), snapshot, family).frame
    failed = base.filter(pl.col("error_code") == "invalid_output")
    assert failed.height > 20
    fixed = failed.select(
        "record_id",
        pl.lit('```json\n{"label": "neutral",\n "confidence": 0.25}\n```').alias("response"),
        *[pl.lit(None, dtype).alias(c) for c, dtype in (("error_code", pl.String), ("error_message", pl.String))],
    )
    merged = apply_repairs(base, fixed)
    assert merged.columns == base.columns and merged.schema == base.schema
    assert merged["error_code"].null_count() == 200
    assert merged.filter(pl.col("record_id").is_in(failed["record_id"].implode()))["output"].to_list() == [
        {"label": "neutral", "confidence": 0.25}
    ] * failed.height
    kept = merged.filter(~pl.col("record_id").is_in(failed["record_id"].implode()))
    assert kept.equals(base.filter(~pl.col("record_id").is_in(failed["record_id"].implode())))
