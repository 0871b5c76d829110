"""The run's final output: collected shards + repairs + refused rows -> Parquet parts and a manifest.

Every input row lands in exactly one part exactly once: a shard's part is its collected frame (a left
join from its input rows) with successful repairs laid over it; rows refused before submission get their
own part with `error_code = "invalid_input"`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from tasks.aws import AwsSettings, client, join_s3, split_s3_uri, storage_options

RESULT_COLUMNS = ("response", "embedding", "error_code", "error_message", "input_tokens", "output_tokens",
                  "stop_reason")


@dataclass(frozen=True)
class OutputPart:
    name: str
    uri: str
    rows: int


def read_parquet(uri: str, aws: AwsSettings) -> pl.DataFrame:
    return pl.read_parquet(uri, storage_options=storage_options(aws))


def write_parquet(frame: pl.DataFrame, uri: str, aws: AwsSettings) -> str:
    frame.write_parquet(uri, storage_options=storage_options(aws), compression="zstd")
    return uri


def overlay(frame: pl.DataFrame, repaired: pl.DataFrame | None) -> tuple[pl.DataFrame, int]:
    """Replace rows of `frame` by successful repairs (same record_id); return the frame and how many."""
    if repaired is None or repaired.is_empty():
        return frame, 0
    ok = repaired.filter(pl.col("error_code").is_null())
    columns = [c for c in ok.columns if c in frame.columns]
    ok = ok.select(columns).join(frame.select("record_id"), on="record_id", how="semi")
    if ok.is_empty():
        return frame, 0
    ok = ok.with_columns(pl.col(c).cast(frame.schema[c]) for c in columns)
    return frame.update(ok, on="record_id", how="left", include_nulls=True), ok.height


def error_frame(rows: pl.DataFrame, code: str, message_column: str | None, kind: str) -> pl.DataFrame:
    """Input rows with every result column empty and an error: for rows never sent to a model."""
    value = (pl.lit(None, pl.List(pl.Float32)).alias("embedding") if kind == "embedding"
             else pl.lit(None, pl.String).alias("response"))
    message = pl.col(message_column).cast(pl.String) if message_column else pl.lit(None, pl.String)
    return rows.drop([c for c in RESULT_COLUMNS if c in rows.columns and c != message_column]).with_columns(
        value,
        pl.lit(code).alias("error_code"),
        message.alias("error_message"),
        pl.lit(None, pl.Int64).alias("input_tokens"),
        pl.lit(None, pl.Int64).alias("output_tokens"),
        pl.lit(None, pl.String).alias("stop_reason"),
    ).drop([message_column] if message_column and message_column != "error_message" else [])


def write_manifest(run_uri: str, manifest: dict[str, Any], aws: AwsSettings) -> str:
    uri = join_s3(run_uri, "results", "manifest.json")
    bucket, key = split_s3_uri(uri)
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, indent=1, default=str).encode(),
                                 ContentType="application/json")
    return uri


def combine_parts(parts: list[OutputPart], aws: AwsSettings, destination: str) -> int:
    """Concatenate the parts into one local Parquet file (the CLI's `./output/...` copy)."""
    if not parts:
        return 0
    frame = pl.concat([read_parquet(p.uri, aws) for p in parts], how="diagonal_relaxed")
    frame.write_parquet(destination, compression="zstd")
    return frame.height
