"""Anthropic Claude on the Messages API (`anthropic.claude-*`, `us.anthropic.claude-*`...)."""

from __future__ import annotations

import polars as pl

from tasks.core.families.base import (
    TEXT_BLOCKS,
    FamilySpec,
    InferenceSettings,
    join_text,
    lit_int,
    sampling,
    user_messages,
)


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    fields: dict[str, pl.Expr] = {
        "anthropic_version": pl.lit("bedrock-2023-05-31"),
        "max_tokens": lit_int(s.max_tokens),
    }
    if s.system is not None:
        fields["system"] = pl.lit(s.system)
    fields["messages"] = user_messages(prompt, typed=True)
    return pl.struct(**fields, **sampling(s))


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
            "usage": pl.Struct({"input_tokens": pl.Int64, "output_tokens": pl.Int64}),
        }
    ),
    response=lambda out: join_text(out.struct.field("content")),
    input_tokens="usage.input_tokens",
    output_tokens="usage.output_tokens",
    stop_reason="stop_reason",
)
