"""Amazon Nova text models on the messages-v1 schema (`amazon.nova-*`, not the embedding or speech models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from tasks.core.families.base import (
    TEXT_BLOCKS,
    FamilySpec,
    InferenceSettings,
    first_tool_input,
    join_text,
    lit_int,
    sampling,
    tool_definition,
    user_messages,
)

if TYPE_CHECKING:
    from tasks.core.schema import OutputSchema


def messages_body(s: InferenceSettings, prompt: pl.Expr, *, schema_version: bool) -> pl.Expr:
    """Nova's body; without `schemaVersion` it is the Converse API's (`tasks.core.families.converse`)."""
    fields: dict[str, pl.Expr] = {"schemaVersion": pl.lit("messages-v1")} if schema_version else {}
    fields["messages"] = user_messages(prompt, typed=False)
    if s.system is not None:
        fields["system"] = pl.concat_list(pl.struct(text=pl.lit(s.system)))
    fields["inferenceConfig"] = pl.struct(maxTokens=lit_int(s.max_tokens), **sampling(s, top_p="topP"))
    return pl.struct(**fields)


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    return messages_body(s, prompt, schema_version=True)


def matches(base: str) -> bool:
    return base.startswith("amazon.nova-") and "embed" not in base and "sonic" not in base


# Nova's output is the Converse API's response shape.
OUTPUT_DTYPE = pl.Struct(
    {
        "output": pl.Struct({"message": pl.Struct({"content": TEXT_BLOCKS})}),
        "stopReason": pl.String,
        "usage": pl.Struct({"inputTokens": pl.Int64, "outputTokens": pl.Int64}),
    }
)


def response(out: pl.Expr) -> pl.Expr:
    return join_text(out.struct.field("output").struct.field("message").struct.field("content"))


def force_schema(body: pl.Expr, schema: OutputSchema) -> pl.Expr:
    """`toolConfig` with one tool whose `inputSchema.json` is the schema, forced by `toolChoice.tool`
    (the same for Nova's InvokeModel body and the Converse API)."""
    tool = tool_definition(schema)
    spec = {"name": tool["name"], "description": tool["description"], "inputSchema": {"json": tool["schema"]}}
    return body.struct.with_fields(
        toolConfig=pl.lit({"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": tool["name"]}}})
    )


# The tool call's `input` read as text: Polars' NDJSON reader gives an object's JSON for a String field.
STRUCTURED_DTYPE = pl.Struct(
    {
        "output": pl.Struct(
            {
                "message": pl.Struct(
                    {
                        "content": pl.List(
                            pl.Struct(
                                {"text": pl.String, "toolUse": pl.Struct({"name": pl.String, "input": pl.String})}
                            )
                        )
                    }
                )
            }
        ),
        "stopReason": pl.String,
        "usage": pl.Struct({"inputTokens": pl.Int64, "outputTokens": pl.Int64}),
    }
)


def structured_answer(out: pl.Expr) -> pl.Expr:
    blocks = out.struct.field("output").struct.field("message").struct.field("content")
    return first_tool_input(blocks, lambda b: b.struct.field("toolUse").struct.field("input"))


ANSWER_PATH = "$.modelOutput.output.message.content[*].toolUse.input"


FAMILY = FamilySpec(
    name="nova",
    kind="text",
    matches=matches,
    ids="amazon.nova-*",
    model_input=model_input,
    output_dtype=OUTPUT_DTYPE,
    response=response,
    input_tokens="usage.inputTokens",
    output_tokens="usage.outputTokens",
    stop_reason="stopReason",
    force_schema=force_schema,
    structured_dtype=STRUCTURED_DTYPE,
    structured_answer=structured_answer,
    answer_path=ANSWER_PATH,
)
