"""On-demand calls for what a batch job cannot take: inputs under the job minimum and small repairs.

Bedrock refuses a batch job under its minimum record count, so a small tail is served through
`InvokeModel` / `Converse` at on-demand price, with bounded concurrency (the runtime has its own
throttling quotas; botocore's retries absorb `ThrottlingException`). Per-row Python is fine here:
by construction fewer than `min_records_per_job` rows take this path per call.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl
from botocore.exceptions import ClientError

from tasks.aws import AwsSettings, client
from tasks.core.formats import InferenceSettings, ModelFamily, invoke_request, parse_invoke_response


def invoke_rows(
    rows: pl.DataFrame, *, model_id: str, family: ModelFamily, settings: InferenceSettings, aws: AwsSettings,
    concurrency: int = 8,
) -> pl.DataFrame:
    """Call the model once per row of `rows` (`record_id`, `prompt`); return one result row each."""
    runtime = client("bedrock-runtime", aws)

    def one(record_id: str, prompt: str) -> dict[str, Any]:
        operation, kwargs = invoke_request(family, settings, prompt)
        try:
            if operation == "converse":
                response = runtime.converse(modelId=model_id, **kwargs)
            else:
                raw = runtime.invoke_model(modelId=model_id, contentType="application/json",
                                           accept="application/json", **kwargs)
                response = json.loads(raw["body"].read())
            row = parse_invoke_response(family, response)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            row = {"error_code": str(status or err.response["Error"].get("Code")),
                   "error_message": f"{err.response['Error'].get('Code')}: {err.response['Error'].get('Message')}"}
        return {"record_id": record_id, **row}

    ids, prompts = rows["record_id"].to_list(), rows["prompt"].to_list()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(one, ids, prompts))
    return _frame(results, family)


def _frame(results: list[dict[str, Any]], family: ModelFamily) -> pl.DataFrame:
    value = (
        pl.Field("embedding", pl.List(pl.Float32)) if family.kind == "embedding" else pl.Field("response", pl.String)
    )
    schema = pl.Schema(
        [("record_id", pl.String), (value.name, value.dtype), ("error_code", pl.String),
         ("error_message", pl.String), ("input_tokens", pl.Int64), ("output_tokens", pl.Int64),
         ("stop_reason", pl.String)]
    )
    return pl.DataFrame([{k: r.get(k) for k in schema.names()} for r in results], schema=schema)
