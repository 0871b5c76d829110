"""Structured outputs end to end: the flow through the emulator and moto with a template that declares an
`output_schema` gives a typed `output` column, on Claude (tool use), Nova through an inference profile
(toolConfig) and Llama (instructions + strict parsing); with a share of broken answers, repair resubmits
them until nearly all are valid and names the field of those that are not.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.helpers import read_output

pytestmark = pytest.mark.e2e

ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
LABELS = ["positive", "negative", "neutral"]
MODELS = {
    "claude": "anthropic.claude-3-haiku-20240307-v1:0",
    "nova-profile": "us.amazon.nova-lite-v1:0",
    "llama": "meta.llama3-8b-instruct-v1:0",
}


@pytest.fixture
def structured_emulator(emulator: Any, local_aws: Any) -> Any:
    before = emulator.profile
    yield lambda **knobs: emulator.set_profile({"time_scale": 1e-4, "min_records": 50, **knobs})
    emulator.set_profile(before)


@pytest.fixture
def out_uri(local_aws: Any) -> str:
    from tasks.aws import client

    bucket = f"structured-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


def texts(n: int) -> pl.DataFrame:
    return pl.DataFrame({"input_text": [f"Review {i}: {uuid.uuid4().hex[:8]} arrived on time." for i in range(n)]})


def run(path: Path, out_uri: str, model_id: str, **params: Any) -> tuple[dict[str, Any], pl.DataFrame]:
    from flows.batch_inference import batch_inference

    summary = batch_inference(**{
        "model_id": model_id, "input_path": str(path), "prompt_id": "sentiment_classifier",
        "job_name_prefix": "structured", "output_uri": out_uri, "role_arn": ROLE, "max_records_per_job": 100,
        "min_records_per_job": 50, "poll_interval_s": 0.5, **params,
    })
    return summary, read_output(summary["results_uri"])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_schema_run_gives_a_typed_output_column(
    prefect_api: str, structured_emulator: Any, out_uri: str, tmp_path: Path, model: str
) -> None:
    structured_emulator()
    path = tmp_path / "reviews.csv"
    rows = texts(230)  # three shards of 100 at most
    rows.write_csv(path)
    _, output = run(path, out_uri, MODELS[model])
    assert output.height == rows.height and output["record_id"].n_unique() == rows.height
    assert output.schema["output"] == pl.Struct({"label": pl.Enum(LABELS), "confidence": pl.Float64})
    assert output["error_code"].null_count() == rows.height, output["error_message"].drop_nulls().head(3)
    values = output.select(pl.col("output").struct.unnest())
    assert values["label"].null_count() == 0 and set(values["label"].cast(pl.String)) == set(LABELS)
    assert values["confidence"].is_between(0, 1).all()
    # `response` keeps what the model said: the answer's JSON.
    assert output["response"].str.starts_with("{").all()
    # A re-run is answered from the cache, the output decoded again from the cached text.
    summary, again = run(path, out_uri, MODELS[model])
    assert summary["cached"] == rows.height
    assert again.sort("record_id").select("record_id", "output").equals(output.sort("record_id").select(
        "record_id", "output"))


def test_broken_answers_are_repaired_until_nearly_all_are_valid(
    prefect_api: str, structured_emulator: Any, out_uri: str, tmp_path: Path
) -> None:
    structured_emulator(invalid_output_rate=0.2)
    path = tmp_path / "reviews.csv"
    rows = texts(500)
    rows.write_csv(path)
    summary, output = run(path, out_uri, MODELS["claude"])
    assert output.height == rows.height and output["record_id"].n_unique() == rows.height
    valid = output.filter(pl.col("error_code").is_null())
    assert valid.height >= 0.99 * rows.height, output["error_code"].value_counts()
    assert valid["output"].null_count() == 0
    left = output.filter(pl.col("error_code").is_not_null())
    assert set(left["error_code"]) <= {"invalid_output"}
    assert left["error_message"].str.contains(r"^(label|confidence)(: |\b)|^not a JSON object").all()
    # Repair did the work: about a fifth were sent again in jobs or on-demand.
    assert summary["repaired"] >= 0.15 * rows.height, summary
