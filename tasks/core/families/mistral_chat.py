"""Mistral's chat-completion models: Mistral Large 24.07 and later, Pixtral (`messages`, `choices`)."""

from __future__ import annotations

import polars as pl

from tasks.core.families.base import FamilySpec, InferenceSettings, lit_int, sampling


def matches(base: str) -> bool:
    return base.startswith("mistral.pixtral") or (
        base.startswith("mistral.mistral-large") and not base.startswith("mistral.mistral-large-2402")
    )


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    user = pl.struct(role=pl.lit("user"), content=prompt)
    messages = (
        pl.concat_list(pl.struct(role=pl.lit("system"), content=pl.lit(s.system)), user)
        if s.system is not None
        else pl.concat_list(user)
    )
    return pl.struct(messages=messages, max_tokens=lit_int(s.max_tokens), **sampling(s))


FAMILY = FamilySpec(
    name="mistral_chat",
    kind="text",
    matches=matches,
    ids="mistral.mistral-large-2407+, pixtral",
    model_input=model_input,
    output_dtype=pl.Struct(
        {
            "choices": pl.List(pl.Struct({"message": pl.Struct({"content": pl.String}), "stop_reason": pl.String})),
            "usage": pl.Struct({"prompt_tokens": pl.Int64, "completion_tokens": pl.Int64}),
        }
    ),
    response="choices[0].message.content",
    input_tokens="usage.prompt_tokens",
    output_tokens="usage.completion_tokens",
    stop_reason="choices[0].stop_reason",
)
