"""Anthropic Claude on the Messages API (`anthropic.claude-*`, `us.anthropic.claude-*`...)."""

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


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    fields: dict[str, pl.Expr] = {
        "anthropic_version": pl.lit("bedrock-2023-05-31"),
        "max_tokens": lit_int(s.max_tokens),
    }
    if s.system is not None:
        fields["system"] = pl.lit(s.system)
    fields["messages"] = user_messages(prompt, typed=True)
    return pl.struct(**fields, **sampling(s))


def force_schema(body: pl.Expr, schema: OutputSchema) -> pl.Expr:
    """Tool use: one tool whose `input_schema` is the schema, forced by `tool_choice {type: tool}`."""
    tool = tool_definition(schema)
    return body.struct.with_fields(
        tools=pl.lit([{"name": tool["name"], "description": tool["description"], "input_schema": tool["schema"]}]),
        tool_choice=pl.lit({"type": "tool", "name": tool["name"]}),
    )


_USAGE = pl.Struct({"input_tokens": pl.Int64, "output_tokens": pl.Int64})
# The tool call's `input` read as text: Polars' NDJSON reader gives an object's JSON for a String field.
STRUCTURED_DTYPE = pl.Struct(
    {
        "content": pl.List(pl.Struct({"type": pl.String, "text": pl.String, "input": pl.String})),
        "stop_reason": pl.String,
        "usage": _USAGE,
    }
)


FAMILY = FamilySpec(
    name="claude",
    kind="text",
    matches=lambda base: base.startswith("anthropic.claude"),
    ids="anthropic.claude-*",
    model_input=model_input,
    output_dtype=pl.Struct(
        {
            "content": TEXT_BLOCKS,
            "stop_reason": pl.String,
            "usage": _USAGE,
        }
    ),
    response=lambda out: join_text(out.struct.field("content")),
    input_tokens="usage.input_tokens",
    output_tokens="usage.output_tokens",
    stop_reason="stop_reason",
    force_schema=force_schema,
    structured_dtype=STRUCTURED_DTYPE,
    structured_answer=lambda out: first_tool_input(out.struct.field("content"), lambda b: b.struct.field("input")),
    answer_path="$.modelOutput.content[?(@.type=='tool_use')].input",
)
