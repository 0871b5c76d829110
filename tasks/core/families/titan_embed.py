"""Amazon Titan Text Embeddings V2 (`amazon.titan-embed-text-v2:0`): an `embedding` per row, no text."""

from __future__ import annotations

import polars as pl

from tasks.core.families.base import FamilySpec, InferenceSettings, lit_int


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    if s.dimensions not in (256, 512, 1024):
        raise ValueError(f"Titan Text Embeddings V2 dimensions must be 256, 512 or 1024, not {s.dimensions}")
    return pl.struct(inputText=prompt, dimensions=lit_int(s.dimensions), normalize=pl.lit(bool(s.normalize)))


FAMILY = FamilySpec(
    name="titan_embed",
    kind="embedding",
    matches=lambda base: base.startswith("amazon.titan-embed-text-v2"),
    ids="amazon.titan-embed-text-v2:0",
    model_input=model_input,
    output_dtype=pl.Struct({"embedding": pl.List(pl.Float64), "inputTextTokenCount": pl.Int64}),
    response="embedding",
    input_tokens="inputTextTokenCount",
)
