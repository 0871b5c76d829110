"""Collect a job's outputs: parse `.jsonl.out`, left-join to the shard's input rows, write Parquet.

The join runs from the input side, so every input row comes out exactly once whatever the output holds:
a record missing from the output gets `error_code="missing"`, duplicates collapse to one (a success wins),
a malformed line becomes its record's `malformed_output` error, and output records that match no input
row are counted as a problem instead of leaking into the result. Parsing is Polars' parallel NDJSON reader
over the file's bytes against a per-family schema (falling back to a line-wise `str.json_decode` when a
line is malformed), the join is a Polars hash join: no per-row Python.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import polars as pl
from boto3.s3.transfer import TransferConfig

from tasks.aws import AwsSettings, client, join_s3, split_s3_uri, storage_options
from tasks.core import answers
from tasks.core.answers import KEY, RequestScope
from tasks.core.formats import (
    ModelFamily,
    decode_outputs,
    output_columns,
    parse_output_bytes,
    parse_output_lines,
    results_with_output,
)
from tasks.core.schema import decode_as
from tasks.core.sources import RECORD_ID

RESULTS_DIR = "results"
RESULTS_MANIFEST = "manifest.json"
_ERROR_RANK = "__rank"
# Output lines per file whose echoed `modelInput` is checked against the request sent for their recordId;
# one mismatch there and every line of the file is checked.
ECHO_SAMPLE = 64
# S3 round trips at once when a step reads or rewrites many result parts: their latency (and a retried
# request's back-off) overlap instead of adding up.
IO_THREADS = 8
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class CollectedShard:
    """One shard's joined results and what was wrong with its outputs (for the report)."""

    frame: pl.DataFrame
    manifest: dict[str, Any] | None
    ok: int
    failed: int
    problems: list[str] = field(default_factory=list)
    # `request_key` + result columns of the records that succeeded: what goes to the answer cache.
    answers: pl.DataFrame = field(default_factory=pl.DataFrame)

    @property
    def error_counts(self) -> dict[str, int]:
        return error_counts(self.frame)


@dataclass(frozen=True)
class ResultPart:
    """One written `results/part-*.parquet` file, as listed in `results/manifest.json`."""

    name: str
    uri: str
    rows: int
    ok: int
    failed: int
    error_counts: dict[str, int]


def error_counts(frame: pl.DataFrame) -> dict[str, int]:
    """Rows per non-null `error_code`, sorted by code."""
    counts = frame.filter(pl.col("error_code").is_not_null()).group_by("error_code").len().sort("error_code")
    return dict(zip(counts["error_code"].to_list(), counts["len"].to_list(), strict=True))


def _empty_results(family: ModelFamily) -> pl.DataFrame:
    return pl.DataFrame(schema={RECORD_ID: pl.String, **results_with_output(family)})


def _input_side(snapshot: pl.DataFrame, family: ModelFamily) -> tuple[pl.DataFrame, list[str]]:
    """Rename input columns that clash with result names (`response` -> `response_input`).

    An `output` of the family's own type is an earlier attempt's result that a repair's rows carried
    along (repair re-sends rows without their result columns, `output` included only if it knows it):
    it is dropped, not kept as input."""
    stale = output_columns(family)
    if "output" in stale and snapshot.schema.get("output") == stale["output"]:
        snapshot = snapshot.drop("output")
    clash = [c for c in results_with_output(family) if c in snapshot.columns]
    if not clash:
        return snapshot, []
    renamed = snapshot.rename({c: f"{c}_input" for c in clash})
    return renamed, [f"input columns {clash} clash with result columns; kept as {[c + '_input' for c in clash]}"]


def best_per_record(results: pl.DataFrame) -> pl.DataFrame:
    """One row per record_id: a success over a model error over a malformed line, then the first seen."""
    rank = (
        pl.when(pl.col("error_code").is_null())
        .then(0)
        .when(pl.col("error_code") == "malformed_output")
        .then(2)
        .otherwise(1)
    )
    return (
        results.filter(pl.col(RECORD_ID).is_not_null())
        .with_row_index("__order")
        .with_columns(rank.alias(_ERROR_RANK))
        .sort([_ERROR_RANK, "__order"])
        .unique(RECORD_ID, keep="first", maintain_order=True)
        .drop(_ERROR_RANK, "__order")
    )


def join_results(
    snapshot: pl.DataFrame,
    results: pl.DataFrame,
    family: ModelFamily,
    *,
    missing_code: str = "missing",
    missing_message: str = "no output record for this recordId",
) -> pl.DataFrame:
    """Input rows (in their order) + result columns: exactly one output row per input row."""
    schema = [c for c in results_with_output(family) if c in results.columns]
    best = best_per_record(results).select(RECORD_ID, *schema)
    found = pl.col("__found")
    joined = snapshot.join(
        best.with_columns(pl.lit(True).alias("__found")),
        on=RECORD_ID,
        how="left",
        maintain_order="left",
        validate="m:1",
    )
    return joined.with_columns(
        pl.when(found.is_null()).then(pl.lit(missing_code)).otherwise(pl.col("error_code")).alias("error_code"),
        pl.when(found.is_null())
        .then(pl.lit(missing_message))
        .otherwise(pl.col("error_message"))
        .alias("error_message"),
    ).drop("__found")


def conform(frame: pl.DataFrame, family: ModelFamily, input_columns: Sequence[str] | None = None) -> pl.DataFrame:
    """The output schema exactly: input columns, then result columns with their dtypes (missing -> null).

    A structured family's `output` is decoded from `response` when the frame has none (answers from the
    cache or on-demand calls carry only the text); an answer outside the schema becomes `invalid_output`.
    """
    schema = results_with_output(family)
    if "output" in schema and "output" not in frame.columns and family.result_column in frame.columns:
        frame = decode_outputs(frame, family)
    inputs = list(input_columns) if input_columns is not None else [c for c in frame.columns if c not in schema]
    inputs = [c for c in inputs if c not in output_columns(family)]  # an earlier attempt's output (repairs)
    results = [(pl.col(c) if c in frame.columns else pl.lit(None)).cast(dtype).alias(c) for c, dtype in schema.items()]
    return frame.select(*inputs, *results)


def _read_json(uri: str, aws: AwsSettings) -> dict[str, Any] | None:
    bucket, key = split_s3_uri(uri)
    s3 = client("s3", aws)
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def list_outputs(output_prefix_uri: str, aws: AwsSettings) -> list[str]:
    """Every object URI under a job's `{out}/{jobId}/` prefix."""
    bucket, prefix = split_s3_uri(output_prefix_uri.rstrip("/") + "/")
    paginator = client("s3", aws).get_paginator("list_objects_v2")
    return [
        f"s3://{bucket}/{obj['Key']}"
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def read_output_bytes(uris: Sequence[str], aws: AwsSettings) -> bytes:
    """The concatenated bytes of the given `.jsonl.out` files (one shard's worth, so bounded)."""
    s3 = client("s3", aws)
    chunks = []
    for uri in uris:
        bucket, key = split_s3_uri(uri)
        chunks.append(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return b"\n".join(chunks)


def read_snapshot(snapshot_uri: str, aws: AwsSettings) -> pl.DataFrame:
    return pl.read_parquet(snapshot_uri, storage_options=storage_options(aws))


def in_parallel(work: Callable[[T], R], items: Iterable[T], workers: int = IO_THREADS) -> list[R]:
    """`[work(item) for item in items]`, up to `workers` at once, in order: for S3- and wait-bound work."""
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="io") as pool:
        return list(pool.map(work, items))


def read_snapshots(uris: Iterable[str], aws: AwsSettings) -> list[pl.DataFrame]:
    """Several Parquet files, read concurrently, in the given order."""
    return in_parallel(lambda uri: read_snapshot(uri, aws), uris)


def split_keys(snapshot: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(input rows, `record_id` + `__request_key`): snapshots carry each row's request key beside it."""
    if KEY not in snapshot.columns:
        return snapshot, pl.DataFrame(schema={RECORD_ID: pl.String, KEY: pl.String})
    return snapshot.drop(KEY), snapshot.select(RECORD_ID, KEY)


def echo_mismatches(data: bytes, keys: pl.DataFrame, scope: RequestScope, sample: int = ECHO_SAMPLE) -> pl.Series:
    """recordIds whose output line echoes a `modelInput` other than the request sent under that id.

    Bedrock echoes each record's `modelInput`; decoded with the type this run built it with and encoded
    again, it gives the sent bytes, hence the sent request key. A sample of lines spread over the file
    is checked; if any differs, every line is.
    """
    lines = pl.DataFrame(schema={"line": pl.String}) if not data.strip() else pl.read_lines(data, name="line")
    if lines.is_empty() or keys.is_empty():
        return pl.Series(RECORD_ID, [], dtype=pl.String)
    picked = lines[np.unique(np.linspace(0, lines.height - 1, min(sample, lines.height)).astype(np.int64))]
    wrong = _mismatches(picked, keys, scope)
    return _mismatches(lines, keys, scope) if wrong.len() else wrong


def _decode_or_none(text: str, dtype: pl.DataType) -> dict[str, Any] | None:
    """One echoed line decoded as `dtype`, or None (only on the rare fallback path: a sample's few lines)."""
    try:
        return pl.Series([text]).str.json_decode(dtype).to_list()[0]
    except pl.exceptions.PolarsError:
        return None


def _mismatches(lines: pl.DataFrame, keys: pl.DataFrame, scope: RequestScope) -> pl.Series:
    line = pl.col("line")
    dtype = pl.Struct({"recordId": pl.String, "modelInput": scope.model_input})
    try:
        decoded = lines.filter(line.str.json_path_match("$.recordId").is_not_null()).select(
            line.str.json_decode(dtype).alias("d")
        )
    except pl.exceptions.PolarsError:  # an echo of another shape: decode line by line, skip what fails
        decoded = lines.select(line.map_elements(lambda text: _decode_or_none(text, dtype), return_dtype=dtype)
                               .alias("d")).drop_nulls()
    d = pl.col("d").struct.field
    echoed = decoded.select(
        d("recordId").alias(RECORD_ID),
        pl.when(d("modelInput").is_not_null()).then(scope.key_expr(d("modelInput").struct.json_encode()))
        .alias("__echo"),
    )
    return (
        echoed.join(keys, on=RECORD_ID, how="inner")
        .filter(pl.col("__echo").is_not_null() & (pl.col("__echo") != pl.col(KEY)))
        .get_column(RECORD_ID)
        .unique(maintain_order=True)
    )


def collect_shard(
    *,
    family: ModelFamily,
    output_prefix_uri: str,
    snapshot_uri: str,
    input_file_name: str,
    aws: AwsSettings,
    missing_code: str = "missing",
    job_name: str | None = None,
    scope: RequestScope | None = None,
) -> CollectedShard:
    """Join one job's outputs (`{out}/{jobId}/*.jsonl.out`, `manifest.json.out`) to its snapshot rows.

    `missing_code` lets the caller say why absent records are absent (`"expired"` for an Expired job).
    With `scope`, echoed requests are checked against the sent ones (`echo_mismatches`): a record whose
    output answers another request gets `error_code="request_mismatch"`, never another row's reply.
    """
    problems: list[str] = []
    prefix = output_prefix_uri.rstrip("/") + "/"
    found = list_outputs(prefix, aws)
    outputs = sorted(u for u in found if u.endswith(".jsonl.out"))
    expected = f"{input_file_name}.out"
    if not outputs:
        problems.append(f"missing output file {expected} under {prefix}: every record marked {missing_code}")
    elif not any(u.endswith("/" + expected) for u in outputs):
        problems.append(f"expected {expected} under {prefix}, found {[u.rsplit('/', 1)[-1] for u in outputs]}")
    manifest = _read_json(prefix + "manifest.json.out", aws)
    if manifest is None:
        problems.append(f"missing manifest.json.out under {prefix}")

    data = read_output_bytes(outputs, aws)
    parsed = parse_output_bytes(data, family)
    snapshot, keys = split_keys(read_snapshot(snapshot_uri, aws))
    wrong = echo_mismatches(data, keys, scope) if scope is not None else pl.Series(RECORD_ID, [], pl.String)
    if wrong.len():
        examples = ", ".join(repr(r) for r in wrong.head(3).to_list())
        problems.append(f"job {job_name or prefix}: {wrong.len()} output record(s) echo a request other than "
                        f"the one sent under their recordId (e.g. {examples}): marked request_mismatch")
        parsed = parsed.filter(~pl.col(RECORD_ID).is_in(wrong.implode()).fill_null(False))
    snapshot, clash = _input_side(snapshot, family)
    problems += clash
    frame, more = _join_and_check(snapshot, parsed, family, missing_code=missing_code)
    problems += more
    if wrong.len():
        hit = pl.col(RECORD_ID).is_in(wrong.implode())
        frame = frame.with_columns(
            pl.when(hit).then(pl.lit("request_mismatch")).otherwise(pl.col("error_code")).alias("error_code"),
            pl.when(hit).then(pl.lit(f"job {job_name or prefix}: the output under this recordId answers "
                                     f"another request")).otherwise(pl.col("error_message")).alias("error_message"),
        )
    if manifest is not None and manifest.get("totalRecordCount") not in (None, snapshot.height):
        problems.append(f"manifest counts {manifest['totalRecordCount']} records, the shard has {snapshot.height}")
    failed = int(frame.get_column("error_code").is_not_null().sum())
    return CollectedShard(frame, manifest, frame.height - failed, failed, problems,
                          answers.answers(frame, keys, family))


def _join_and_check(
    snapshot: pl.DataFrame, parsed: pl.DataFrame, family: ModelFamily, *, missing_code: str
) -> tuple[pl.DataFrame, list[str]]:
    problems: list[str] = []
    malformed = int((parsed.get_column("error_code") == "malformed_output").sum())
    orphans = int(parsed.get_column(RECORD_ID).is_null().sum())
    if malformed:
        problems.append(f"{malformed} malformed output line(s)")
    if orphans:
        problems.append(f"{orphans} output line(s) with no readable recordId (cannot be matched to a row)")
    duplicates = parsed.height - orphans - parsed.get_column(RECORD_ID).drop_nulls().n_unique()
    if duplicates:
        problems.append(f"{duplicates} duplicate output record(s) collapsed")
    strangers = parsed.filter(pl.col(RECORD_ID).is_not_null()).join(
        snapshot.select(RECORD_ID), on=RECORD_ID, how="anti"
    )
    if strangers.height:
        problems.append(f"{strangers.get_column(RECORD_ID).n_unique()} output recordId(s) match no input row")
    frame = join_results(snapshot, parsed, family, missing_code=missing_code)
    missing = int((frame.get_column("error_code") == missing_code).sum())
    if missing and parsed.height:
        problems.append(f"{missing} record(s) missing from the output")
    return conform(frame, family, snapshot.columns), problems


def collect_lines(lines: pl.DataFrame | bytes, snapshot: pl.DataFrame, family: ModelFamily) -> CollectedShard:
    """`collect_shard` without S3: parse output lines (a `line` frame or a file's bytes), join to `snapshot`."""
    if isinstance(lines, bytes):
        parsed = parse_output_bytes(lines, family)
    else:
        parsed = parse_output_lines(lines, family) if lines.height else _empty_results(family)
    snapshot, clash = _input_side(snapshot, family)
    frame, problems = _join_and_check(snapshot, parsed, family, missing_code="missing")
    failed = int(frame.get_column("error_code").is_not_null().sum())
    return CollectedShard(frame, None, frame.height - failed, failed, clash + problems)


def mark_failed(
    snapshot_uri: str, error_code: str, error_message: str, family: ModelFamily, aws: AwsSettings
) -> pl.DataFrame:
    """Every row of a shard whose job produced nothing usable (Failed, Stopped...), with that error."""
    snapshot, _ = _input_side(split_keys(read_snapshot(snapshot_uri, aws))[0], family)
    return conform(
        snapshot.with_columns(
            pl.lit(error_code, dtype=pl.String).alias("error_code"),
            pl.lit(error_message, dtype=pl.String).alias("error_message"),
        ),
        family,
        snapshot.columns,
    )


def mark_invalid(invalid_uri: str, family: ModelFamily, aws: AwsSettings) -> pl.DataFrame:
    """The rows prepare refused (`invalid.parquet`) in the output schema, `error_code="invalid_input"`."""
    refused, _ = _input_side(read_snapshot(invalid_uri, aws), family)
    inputs = [c for c in refused.columns if c != "input_error"]
    marked = refused.with_columns(
        pl.lit("invalid_input", dtype=pl.String).alias("error_code"),
        pl.col("input_error").alias("error_message"),
    )
    return conform(marked, family, inputs)


def apply_repairs(base: pl.DataFrame, repaired: pl.DataFrame) -> pl.DataFrame:
    """Replace the result columns of the rows a repair re-ran; row order and input columns stay.

    Repaired rows without an `output` (repair results carry the answer text) get it decoded from their
    `response` into the base's `output` type: they were validated when collected.
    """
    if "output" in base.columns and "output" not in repaired.columns and "response" in repaired.columns:
        ok = repaired.get_column("error_code").is_null() if "error_code" in repaired.columns else None
        texts = repaired.get_column("response") if ok is None else repaired.select(
            pl.when(pl.lit(ok)).then(pl.col("response"))).to_series()
        repaired = repaired.with_columns(decode_as(texts, base.schema["output"]).alias("output"))
    result_cols = [c for c in repaired.columns if c != RECORD_ID and c in base.columns]
    fresh = best_per_record(repaired).select(RECORD_ID, *result_cols)
    merged = base.join(fresh, on=RECORD_ID, how="left", maintain_order="left", suffix="__new")
    hit = pl.col(RECORD_ID).is_in(fresh.get_column(RECORD_ID).implode())
    return merged.with_columns(
        [pl.when(hit).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c) for c in result_cols]
    ).select(base.columns)


# ---------------------------------------------------------------------------------------------- writing


def result_part_name(index: int) -> str:
    return f"part-{index:04d}"


def write_result_part(frame: pl.DataFrame, run_uri: str, name: str, aws: AwsSettings) -> ResultPart:
    """Write `results/<name>.parquet` (uploaded with multipart when large) and describe it."""
    uri = join_s3(run_uri, RESULTS_DIR, f"{name}.parquet")
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    buffer.seek(0)
    bucket, key = split_s3_uri(uri)
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    client("s3", aws).upload_fileobj(buffer, bucket, key, Config=config)
    failed = int(frame.get_column("error_code").is_not_null().sum())
    return ResultPart(name, uri, frame.height, frame.height - failed, failed, error_counts(frame))


def write_results_manifest(
    run_uri: str, parts: Sequence[ResultPart], aws: AwsSettings, extra: Mapping[str, Any] | None = None
) -> str:
    """`results/manifest.json`: the parts and run totals (what the report and a re-run read)."""
    totals: dict[str, int] = {}
    for part in parts:
        for code, n in part.error_counts.items():
            totals[code] = totals.get(code, 0) + n
    document = {
        "parts": [asdict(p) for p in sorted(parts, key=lambda p: p.name)],
        "rows": sum(p.rows for p in parts),
        "ok": sum(p.ok for p in parts),
        "failed": sum(p.failed for p in parts),
        "error_counts": dict(sorted(totals.items())),
        **(dict(extra) if extra else {}),
    }
    uri = join_s3(run_uri, RESULTS_DIR, RESULTS_MANIFEST)
    bucket, key = split_s3_uri(uri)
    body = json.dumps(document, indent=1, sort_keys=True).encode()
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return uri


def write_results(
    frames: Mapping[str, pl.DataFrame] | Sequence[pl.DataFrame],
    run_uri: str,
    aws: AwsSettings,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write every part (a sequence is numbered `part-0001`...) and the manifest; return the results URI."""
    named = (
        frames.items()
        if isinstance(frames, Mapping)
        else ((result_part_name(i), f) for i, f in enumerate(frames, start=1))
    )
    parts = [write_result_part(frame, run_uri, name, aws) for name, frame in named]
    write_results_manifest(run_uri, parts, aws, extra)
    return join_s3(run_uri, RESULTS_DIR) + "/"


def result_part_uris(results_uri: str, aws: AwsSettings | None = None) -> list[str]:
    """The parts `results/manifest.json` lists: the run's output is these files, never a glob."""
    manifest = _read_json(join_s3(results_uri.rstrip("/"), RESULTS_MANIFEST), aws or AwsSettings.from_env())
    if manifest is None:
        raise FileNotFoundError(f"no {RESULTS_MANIFEST} under {results_uri}: the run has not finished")
    return [part["uri"] for part in manifest["parts"]]


def read_results(run_uri: str, aws: AwsSettings) -> pl.LazyFrame:
    """All result parts of a run (as its manifest lists them) as one lazy frame."""
    parts = result_part_uris(join_s3(run_uri, RESULTS_DIR), aws)
    return pl.scan_parquet(parts, storage_options=storage_options(aws))
