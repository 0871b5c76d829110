"""Amazon Nova text models on the messages-v1 schema (`amazon.nova-*`, not the embedding or speech models)."""

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
)
