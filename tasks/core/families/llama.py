"""Meta Llama 3+ instruct models (`meta.llama*`): the chat template goes into the raw prompt."""

from __future__ import annotations

import polars as pl

from tasks.core.families.base import FamilySpec, InferenceSettings, lit_int, sampling


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    # Llama 3+ instruct models expect their chat template in the raw prompt (no system field).
    head = "<|begin_of_text|>"
    if s.system is not None:
        head += f"<|start_header_id|>system<|end_header_id|>\n\n{s.system}<|eot_id|>"
    head += "<|start_header_id|>user<|end_header_id|>\n\n"
    tail = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    return pl.struct(
        prompt=pl.concat_str([pl.lit(head), prompt, pl.lit(tail)]), max_gen_len=lit_int(s.max_tokens), **sampling(s)
    )


FAMILY = FamilySpec(
    name="llama",
    kind="text",
    matches=lambda base: base.startswith("meta.llama"),
    ids="meta.llama*",
    model_input=model_input,
    output_dtype=pl.Struct(
        {
            "generation": pl.String,
            "prompt_token_count": pl.Int64,
            "generation_token_count": pl.Int64,
            "stop_reason": pl.String,
        }
    ),
    response="generation",
    input_tokens="prompt_token_count",
    output_tokens="generation_token_count",
    stop_reason="stop_reason",
)
