"""A throwaway model family, written the way a new `tasks/core/families/<name>.py` module would be.

`tests/test_families.py` registers it (`tasks.core.families.register(FAMILY)`) and drives it through the
`tasks.core.formats` facade only, to show that a family is this one module: nothing else changes.
"""

from __future__ import annotations

import polars as pl

from tasks.core.families.base import FamilySpec, InferenceSettings, lit_int, sampling


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    fields = {"text": prompt, "maxLen": lit_int(s.max_tokens)}
    if s.system is not None:
        fields["preamble"] = pl.lit(s.system)
    return pl.struct(**fields, **sampling(s, temperature="temp", top_p="nucleus"))


FAMILY = FamilySpec(
    name="parrot",
    kind="text",
    matches=lambda base: base.startswith("acme.parrot"),
    ids="acme.parrot-*",
    model_input=model_input,
    output_dtype=pl.Struct(
        {
            "replies": pl.List(pl.Struct({"say": pl.String})),
            "finish": pl.String,
            "tokens": pl.Struct({"in": pl.Int64, "out": pl.Int64}),
        }
    ),
    response="replies[0].say",
    input_tokens="tokens.in",
    output_tokens="tokens.out",
    stop_reason="finish",
    defaults={"max_tokens": 77},
)
