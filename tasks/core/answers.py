"""The answer cache: every answered request kept under a key made from what was sent, so none is paid twice.

A request's key is the SHA-256 of (model id, invocation type, the SHA-256 of the `modelInput` JSON exactly
as written in its JSONL line), computed by Polars in the same pass that builds the line. The record id is not part of
it: a re-run after rows were inserted, reordered or re-numbered finds the same answers. The cache is
Parquet under `<output location>/answer-cache/<model>-<invocation type>/`, one immutable file per
collected job (named by what it was collected from, so collecting again rewrites the same file), holding
`request_key` and the result columns of the requests that succeeded. Errors are never cached: a retry
may fix them.

Prepare loads the cached keys once and marks each staged row as a hit or a miss (a vectorised `is_in`);
only misses are planned into shards. Results for hits are joined back by key at the end of the run.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` expression namespace: stable SHA-256 in Polars)

from tasks.aws import AwsSettings, client, join_s3, split_s3_uri, storage_options
from tasks.core.formats import ModelFamily, result_schema

KEY = "__request_key"  # in staged parts and snapshots
CACHE_KEY = "request_key"  # in cache files
CACHE_DIR = "answer-cache"
SCHEME = "bbf-request-v1"  # bump to start a new cache if the key's definition ever changes
_MODEL_INPUT = '"modelInput":'


def _scope(model_id: str, invocation_type: str) -> str:
    return f"{SCHEME}\n{model_id}\n{invocation_type}\n"


def model_input_json_expr(line: pl.Expr) -> pl.Expr:
    """The `modelInput` JSON of a request line `{"recordId": "...", "modelInput": {...}}`, byte for byte.

    The record id is a JSON string, so an unescaped `"modelInput":` cannot occur inside it: the first
    occurrence starts the model input, which runs to the line's closing brace.
    """
    return line.str.splitn(_MODEL_INPUT, 2).struct.field("field_1").str.strip_suffix("}")


def model_input_json_of(line: str) -> str:
    """`model_input_json_expr` for one line, in plain Python."""
    return line.split(_MODEL_INPUT, 1)[1].removesuffix("}")


def request_key_expr(model_input_json: pl.Expr, model_id: str, invocation_type: str) -> pl.Expr:
    """SHA-256 (hex, first 32 digits) of the request's scope and the SHA-256 of its `modelInput` JSON.

    Hashing the model input first, then the scope with that digest, never builds a scope + input copy of
    every request (a chunk's worth of lines would be copied once more)."""
    digest = model_input_json.chash.sha2_256()
    return pl.concat_str([pl.lit(_scope(model_id, invocation_type)), digest]).chash.sha2_256().str.slice(0, 32)


def request_key(model_input_json: str, model_id: str, invocation_type: str) -> str:
    """`request_key_expr` for one request, in plain Python (the two must agree: tested)."""
    digest = hashlib.sha256(model_input_json.encode()).hexdigest()
    return hashlib.sha256((_scope(model_id, invocation_type) + digest).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RequestScope:
    """What a request key is relative to, and the `modelInput` struct type this run builds (with it, an
    echoed `modelInput` re-encodes to the very bytes that were sent, whatever the echo's key order)."""

    model_id: str
    invocation_type: str
    model_input: pl.DataType

    def key_expr(self, model_input_json: pl.Expr) -> pl.Expr:
        return request_key_expr(model_input_json, self.model_id, self.invocation_type)


def cache_uri(output_base: str, model_id: str, invocation_type: str) -> str:
    """Where the answers of one model (and invocation type) live under an output location."""
    slug = re.sub(r"[^a-zA-Z0-9.\-]+", "-", model_id).strip("-")
    return join_s3(output_base, CACHE_DIR, f"{slug}-{invocation_type}")


def _files(uri: str, aws: AwsSettings) -> list[str]:
    bucket, prefix = split_s3_uri(uri.rstrip("/") + "/")
    pages = client("s3", aws).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(f"s3://{bucket}/{o['Key']}" for p in pages for o in p.get("Contents", [])
                  if o["Key"].endswith(".parquet"))


def _scan(uri: str, aws: AwsSettings) -> pl.LazyFrame | None:
    files = _files(uri, aws)
    if not files:
        return None
    return pl.scan_parquet(files, storage_options=storage_options(aws), missing_columns="insert",
                           extra_columns="ignore")


def cached_keys(uri: str, aws: AwsSettings) -> pl.Series:
    """Every key the cache holds an answer for (what prepare looks staged requests up in)."""
    scan = _scan(uri, aws)
    if scan is None:
        return pl.Series(CACHE_KEY, [], dtype=pl.String)
    return scan.select(pl.col(CACHE_KEY).unique()).collect().get_column(CACHE_KEY)


def lookup(uri: str, keys: pl.Series, family: ModelFamily, aws: AwsSettings) -> pl.DataFrame:
    """`request_key` + the result columns for those of `keys` the cache answers (one row per key)."""
    columns = _answer_columns(family)
    scan = _scan(uri, aws)
    if scan is None:
        return pl.DataFrame(schema={CACHE_KEY: pl.String, **columns})
    wanted = pl.DataFrame({CACHE_KEY: keys.unique()}).lazy()
    return (
        scan.select(CACHE_KEY, *[pl.col(c).cast(t) for c, t in columns.items()])
        .join(wanted, on=CACHE_KEY, how="semi")
        .unique(CACHE_KEY, keep="first")
        .collect()
    )


def _answer_columns(family: ModelFamily) -> dict[str, pl.DataType]:
    return {c: t for c, t in result_schema(family).items() if c not in ("error_code", "error_message")}


def answers(frame: pl.DataFrame, keys: pl.DataFrame, family: ModelFamily) -> pl.DataFrame:
    """The cacheable rows of a collected frame: successes, keyed by the request their record sent.

    `keys` maps `record_id` to `__request_key` (from the shard's snapshot or on-demand file).
    """
    columns = list(_answer_columns(family))
    return (
        frame.filter(pl.col("error_code").is_null())
        .select("record_id", *columns)
        .join(keys.select("record_id", KEY), on="record_id", how="inner")
        .select(pl.col(KEY).alias(CACHE_KEY), *columns)
        .filter(pl.col(CACHE_KEY).is_not_null())
    )


def store(uri: str, name: str, rows: pl.DataFrame, aws: AwsSettings) -> int:
    """Write answered requests as `<cache>/<name>.parquet` (same name, same content: idempotent)."""
    if rows.is_empty():
        return 0
    buffer = io.BytesIO()
    rows.write_parquet(buffer, compression="zstd")
    bucket, key = split_s3_uri(join_s3(uri, f"{name}.parquet"))
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return rows.height


def attach(rows: pl.DataFrame, uri: str, family: ModelFamily, aws: AwsSettings) -> pl.DataFrame:
    """Input rows (with `__request_key`) + their cached answers, in the output schema; a key the cache
    no longer holds (deleted since prepare) gives `error_code="missing"`, never a silent gap."""
    found = lookup(uri, rows.get_column(KEY), family, aws)
    joined = rows.join(found.rename({CACHE_KEY: KEY}).with_columns(pl.lit(True).alias("__hit")), on=KEY,
                       how="left", maintain_order="left")
    hit = pl.col("__hit").fill_null(False)
    return joined.with_columns(
        pl.when(hit).then(None).otherwise(pl.lit("missing")).cast(pl.String).alias("error_code"),
        pl.when(hit).then(None).otherwise(pl.lit("answer no longer in the answer cache")).cast(pl.String)
        .alias("error_message"),
    ).drop("__hit", KEY)


def describe(uri: str, aws: AwsSettings) -> dict[str, Any]:
    """Files and answers in a cache (for the CLI and tests)."""
    files = _files(uri, aws)
    scan = _scan(uri, aws)
    answered = scan.select(pl.col(CACHE_KEY).n_unique()).collect().item() if scan is not None else 0
    return {"uri": uri, "files": len(files), "answers": int(answered)}
