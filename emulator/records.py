"""The columnar record pipeline: JSONL lines in, Bedrock output lines out, with no per-record Python loop.

Arrow's JSON reader decodes a whole file under a family's schema in one call (about ten times faster than
the nested-struct paths of Polars' own reader here). A file that does not decode as a whole is bisected
until the undecodable records are isolated, so one odd record costs O(log n) extra decodes and becomes that
record's 400 error rather than a job failure, as in Bedrock. Replies, token counts and output lines are then
built with Polars expressions; each output line is the input line with `modelOutput` (or `error`) appended.
"""

from __future__ import annotations

import io
import re

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from emulator.families import (
    FEATURES,
    INPUT_SHAPES,
    REPLY_PREFIX,
    Family,
    InputShape,
    embeddings,
    output_expr,
    stop_reason_expr,
)

BLOCK_BYTES = 8 << 20


def split_lines(data: bytes) -> list[bytes]:
    """Non-blank lines of a JSONL file (Bedrock ignores blank lines)."""
    return [line for line in data.split(b"\n") if line.strip()]


def first_invalid_line(lines: list[bytes]) -> tuple[int, str] | None:
    """(1-based line number, reason) of the first line that is not a JSON object, or None."""
    try:
        _read(lines, pa.schema([]))
        return None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for number, line in enumerate(lines, start=1):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return number, str(exc)
        if not isinstance(value, dict):
            return number, "a line must hold one JSON object"
    return None


def _read(lines: list[bytes], schema: pa.Schema) -> pa.Table:
    blob = b"\n".join(lines)
    longest = max((len(line) for line in lines), default=0)
    options = pj.ReadOptions(block_size=max(BLOCK_BYTES, longest + 2))
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(io.BytesIO(blob), read_options=options, parse_options=parse)


_COLUMN = re.compile(r"Column\((/[^)]*)\)")


def _undecodable(lines: list[bytes], reason: str) -> pl.DataFrame:
    match = _COLUMN.search(reason)
    where = "#" + (match.group(1).removeprefix("/modelInput") if match else "")
    record_ids = pl.Series(lines, dtype=pl.Binary).cast(pl.String).str.json_path_match("$.recordId")
    return (
        pl.DataFrame({"record_id": record_ids})
        .with_columns(*[pl.lit(None, dtype).alias(name) for name, dtype in FEATURES.items()])
        .with_columns(error=pl.lit(f"{where}: expected type does not match the value"))
    )


def decode(lines: list[bytes], shapes: tuple[InputShape, ...]) -> pl.DataFrame:
    """Feature frame (record_id, prompt, text_bytes, max_tokens, error, ...) in line order."""
    if not lines:
        return _undecodable([], "")
    reason = ""
    for shape in shapes:
        try:
            return shape.features(pl.from_arrow(_read(lines, shape.schema)))  # type: ignore[arg-type]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            reason = str(exc)
    if len(lines) == 1:
        return _undecodable(lines, reason)
    mid = len(lines) // 2
    return pl.concat([decode(lines[:mid], shapes), decode(lines[mid:], shapes)], how="vertical_relaxed")


def _fit_bytes(df: pl.DataFrame) -> pl.DataFrame:
    """Cut replies whose character prefix still exceeds 4 × max_tokens bytes (multi-byte text only)."""
    limit = pl.col("max_tokens") * 4
    over = df.select(pl.arg_where(pl.col("reply").str.len_bytes() > limit)).to_series()
    if over.is_empty():
        return df
    rows = df[over]
    fixed = [
        reply.encode()[: int(cap) * 4].decode("utf-8", "ignore")
        for reply, cap in zip(rows["reply"], rows["max_tokens"], strict=True)
    ]
    return df.with_columns(df["reply"].scatter(over, fixed))


def generate(lines: list[bytes], family: Family, model_id: str) -> pl.DataFrame:
    """Per record: record_id, head (the line's own members), output (modelOutput JSON or null),
    error_code, error_message, input_tokens, output_tokens, stop_reason."""
    df = (
        decode(lines, INPUT_SHAPES[family])
        .with_columns(
            line=pl.Series(lines, dtype=pl.Binary).cast(pl.String),
        )
        .with_row_index("idx")
    )
    ok = pl.col("error").is_null()
    if family is Family.TITAN_EMBED_V2:
        df = df.with_columns(
            embedding=embeddings(df["text"], df["dims"], df["normalize"]),
            input_tokens=((pl.col("text_bytes") + 3) // 4).clip(lower_bound=1),
            output_tokens=pl.lit(0, pl.Int64),
            truncated=pl.lit(False),
        )
    else:
        df = df.with_columns(
            full=pl.lit(REPLY_PREFIX) + pl.col("prompt").fill_null(""),
        ).with_columns(
            reply=pl.col("full").str.head(pl.col("max_tokens").fill_null(0).clip(upper_bound=1 << 40) * 4),
        )
        df = _fit_bytes(df).with_columns(
            truncated=pl.col("reply").str.len_chars() < pl.col("full").str.len_chars(),
            input_tokens=((pl.col("text_bytes").fill_null(0) + 3) // 4).clip(lower_bound=1),
            output_tokens=((pl.col("reply").str.len_bytes().cast(pl.Int64) + 3) // 4).clip(lower_bound=1),
        )
    inner = pl.col("line").str.strip_chars().str.strip_prefix("{").str.strip_suffix("}").str.strip_chars()
    generated_id = pl.format("RECORD{}", (pl.col("idx") + 1).cast(pl.String).str.zfill(7))
    head = pl.concat_str(
        [
            pl.when(pl.col("record_id").is_null()).then(pl.format('"recordId":"{}"', generated_id)),
            pl.when(inner != "").then(inner),
        ],
        separator=",",
        ignore_nulls=True,
    )
    return df.select(
        pl.col("record_id").fill_null(generated_id),
        pl.when(head != "").then(head).alias("head"),
        pl.when(ok).then(output_expr(family, model_id)).alias("output"),
        pl.when(ok).then(None).otherwise(pl.lit(400, pl.Int64)).alias("error_code"),
        pl.when(ok)
        .then(None)
        .otherwise(
            pl.format(
                "Malformed input request: {}, please reformat your input and try again.", pl.col("error")
            )
        )
        .alias("error_message"),
        pl.when(ok).then(pl.col("input_tokens")).otherwise(0).alias("input_tokens"),
        pl.when(ok).then(pl.col("output_tokens")).otherwise(0).alias("output_tokens"),
        pl.when(ok).then(stop_reason_expr(family)).alias("stop_reason"),
    )


def output_lines(df: pl.DataFrame) -> pl.Series:
    """Bedrock's `.jsonl.out` lines: the input members + `modelOutput`, or + `error`."""
    error = pl.struct(pl.col("error_code").alias("errorCode"), pl.col("error_message").alias("errorMessage"))
    body = (
        pl.when(pl.col("output").is_not_null())
        .then(pl.lit('"modelOutput":') + pl.col("output"))
        .otherwise(pl.lit('"error":') + error.struct.json_encode())
    )
    line = pl.lit("{") + pl.concat_str([pl.col("head"), body], separator=",", ignore_nulls=True) + pl.lit("}")
    return df.select(line.alias("line")).to_series()


def invoke_one(family: Family, model_id: str, body: bytes) -> dict[str, object]:
    """One record through the same pipeline (runtime InvokeModel/Converse): the row as a dict."""
    line = b'{"recordId":"invoke","modelInput":' + body.strip() + b"}"
    return generate([line], family, model_id).row(0, named=True)
