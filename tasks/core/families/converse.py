"""The Converse API: any chat model with `invocation_type=Converse` (chosen by the invocation type, not the id).

Batch lines carry the Converse request body; on demand it is a `converse` call. Request and response are
Nova's without `schemaVersion`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from tasks.core.families import nova
from tasks.core.families.base import FamilySpec, InferenceSettings

_OUTPUT_KEYS = ("output", "stopReason", "usage")


def model_input(s: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    return nova.messages_body(s, prompt, schema_version=False)


def on_demand_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`converse` kwargs without modelId: `messages`, `system`?, `inferenceConfig`, `toolConfig`?."""
    return "converse", body


def on_demand_output(response: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k in _OUTPUT_KEYS}


FAMILY = FamilySpec(
    name="converse",
    kind="text",
    matches=None,
    model_input=model_input,
    output_dtype=nova.OUTPUT_DTYPE,
    response=nova.response,
    input_tokens="usage.inputTokens",
    output_tokens="usage.outputTokens",
    stop_reason="stopReason",
    on_demand_request=on_demand_request,
    on_demand_output=on_demand_output,
    force_schema=nova.force_schema,
    structured_dtype=nova.STRUCTURED_DTYPE,
    structured_answer=nova.structured_answer,
    answer_path=nova.ANSWER_PATH,
)
