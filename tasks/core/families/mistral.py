"""Mistral's text-completion models: 7B, Mixtral, Small, Large 24.02 (an `[INST]` prompt; no token counts)."""

from __future__ import annotations

import polars as pl

from tasks.core.families import mistral_chat
from tasks.core.families.base import FamilySpec, InferenceSettings, lit_int, sampling


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    head = "<s>[INST] " + (f"{s.system}\n\n" if s.system is not None else "")
    return pl.struct(
        prompt=pl.concat_str([pl.lit(head), prompt, pl.lit(" [/INST]")]),
        max_tokens=lit_int(s.max_tokens),
        **sampling(s),
    )


FAMILY = FamilySpec(
    name="mistral",
    kind="text",
    matches=lambda base: base.startswith("mistral.") and not mistral_chat.matches(base),
    ids="mistral.mistral-7b, mixtral, mistral-small, mistral-large-2402",
    model_input=model_input,
    output_dtype=pl.Struct({"outputs": pl.List(pl.Struct({"text": pl.String, "stop_reason": pl.String}))}),
    response="outputs[0].text",
    stop_reason="outputs[0].stop_reason",
)
