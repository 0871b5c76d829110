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
    TOOL_FAMILIES,
    TOOL_PATHS,
    Family,
    InputShape,
    embeddings,
    output_expr,
    stop_reason_expr,
    tool_output_expr,
)
from emulator.structured import Breakage, schema_column, with_answers

BLOCK_BYTES = 8 << 20


class BadLine(ValueError):
    """A line of the input that is not one JSON object: the whole job fails validation (as on Bedrock)."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number, self.reason = number, reason


def split_lines(data: bytes) -> pl.Series:
    """The non-blank lines of a JSONL file as text (Bedrock ignores blank lines).

    Polars' CSV reader with no quoting and a NUL separator splits 50 MB in ~10 ms; a file it refuses (a
    NUL byte or invalid UTF-8 in some line, neither possible in a JSON line) raises `BadLine` for it.
    """
    try:
        lines = pl.read_csv(
            io.BytesIO(data), has_header=False, separator="\x00", quote_char=None,
            new_columns=["line"], schema={"line": pl.String},
        ).to_series()
    except pl.exceptions.PolarsError:
        raw = [line for line in data.split(b"\n") if line.strip()]
        raise BadLine(*(_first_non_object(raw) or (1, "unreadable line"))) from None
    return lines.filter(lines.str.contains(r"\S"))


def first_invalid_line(lines: list[bytes]) -> tuple[int, str] | None:
    """(1-based line number, reason) of the first line that is not a JSON object, or None."""
    try:
        longest = max((len(line) for line in lines), default=0)
        if _read(b"\n".join(lines), longest, pa.schema([])).num_rows == len(lines):
            return None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return _first_non_object(lines)


def _first_non_object(lines: list[bytes]) -> tuple[int, str] | None:
    for number, line in enumerate(lines, start=1):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return number, str(exc)
        if not isinstance(value, dict):
            return number, "a line must hold one JSON object"
    return None


def _read(blob: bytes, longest: int, schema: pa.Schema) -> pa.Table:
    """Arrow's JSON reader over JSONL bytes; a block must hold the longest line."""
    options = pj.ReadOptions(block_size=max(BLOCK_BYTES, longest + 2))
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(io.BytesIO(blob), read_options=options, parse_options=parse)


_COLUMN = re.compile(r"Column\((/[^)]*)\)")


def _undecodable(lines: pl.Series, reason: str) -> pl.DataFrame:
    match = _COLUMN.search(reason)
    where = "#" + (match.group(1).removeprefix("/modelInput") if match else "")
    return (
        pl.DataFrame({"record_id": lines.str.json_path_match("$.recordId")})
        .with_columns(*[pl.lit(None, dtype).alias(name) for name, dtype in FEATURES.items()])
        .with_columns(error=pl.lit(f"{where}: expected type does not match the value"))
    )


def _whole(
    lines: pl.Series, shapes: tuple[InputShape, ...], blob: bytes | None = None
) -> tuple[pl.DataFrame | None, str]:
    """Features of all lines in one Arrow read per shape, or (None, the last reason) if no shape fits them
    all. `blob` is the file the lines came from, when at hand (else the lines are joined). A row count
    that differs from the line count (two objects on one line) counts as no fit."""
    if blob is None:
        blob = lines.str.join("\n").item().encode()
    longest = int(lines.str.len_bytes().max() or 0)
    reason = ""
    for shape in shapes:
        try:
            table = _read(blob, longest, shape.schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            reason = str(exc)
            continue
        if table.num_rows != len(lines):
            return None, "a line must hold one JSON object"
        return shape.features(pl.from_arrow(table)), ""  # type: ignore[arg-type]
    return None, reason


def decode(lines: pl.Series, shapes: tuple[InputShape, ...]) -> pl.DataFrame:
    """Feature frame (record_id, prompt, text_bytes, max_tokens, error, ...) in line order; records no
    shape fits are isolated by bisection and get a 400 error each."""
    if lines.is_empty():
        return _undecodable(lines, "")
    features, reason = _whole(lines, shapes)
    if features is not None:
        return features
    if len(lines) == 1:
        return _undecodable(lines, reason)
    mid = len(lines) // 2
    return pl.concat([decode(lines[:mid], shapes), decode(lines[mid:], shapes)], how="vertical_relaxed")


def validate(data: bytes, shapes: tuple[InputShape, ...]) -> tuple[pl.Series, pl.DataFrame]:
    """A job file's lines and their features, parsed once: `BadLine` if some line is not a JSON object.

    The common case, every record fitting a shape, is one Arrow read of the file as it is; only otherwise
    are the lines checked one by one (and odd records bisected).
    """
    lines = split_lines(data)
    if lines.is_empty():
        return lines, decode(lines, shapes)
    features, _ = _whole(lines, shapes, data)
    if features is not None:
        return lines, features
    bad = first_invalid_line(lines.cast(pl.Binary).to_list())
    if bad is not None:
        raise BadLine(*bad)
    return lines, decode(lines, shapes)


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


def _structured(df: pl.DataFrame, family: Family, breakage: Breakage | None) -> tuple[pl.DataFrame, bool]:
    """Schema requests (emulator/structured.py): `answer` / `plain` per record, `tool_bytes` (the JSON of
    declared tools, counted as input), and a 400 for a forced tool without a schema. Also whether any
    record has a forced tool (only then is the tool-call output built)."""
    paths = TOOL_PATHS.get(family)
    declared = paths is not None and df["tools"].drop_nulls().len() > 0
    forced = paths is not None and df["tool"].drop_nulls().len() > 0
    df = df.with_columns(
        schema=schema_column(df, paths[1] if forced and paths else None),
        tool_bytes=(
            pl.when(pl.col("tools").is_not_null())
            .then(pl.col("line").str.json_path_match(paths[0]).str.len_bytes().cast(pl.Int64))
            .fill_null(0)
            if declared and paths
            else pl.lit(0, pl.Int64)
        ),
    )
    if forced:
        df = df.with_columns(
            error=pl.when(pl.col("error").is_null() & pl.col("tool").is_not_null() & pl.col("schema").is_null())
            .then(pl.lit("#/tools: the forced tool has no input schema"))
            .otherwise(pl.col("error"))
        )
    return with_answers(df, breakage), forced


def generate(
    lines: pl.Series | list[bytes],
    family: Family,
    model_id: str,
    features: pl.DataFrame | None = None,
    breakage: Breakage | None = None,
) -> pl.DataFrame:
    """Per record: record_id, opened (the input line without its closing brace), glue (what follows its
    members), output (modelOutput JSON or null), error_code, error_message, input_tokens, output_tokens,
    stop_reason. `output_lines` assembles the `.jsonl.out` lines from them.

    `features` are the lines' decoded features when validation already has them. Records that ask for a
    schema get a structured answer, `breakage` deciding which of them break it (emulator/structured.py).
    """
    if isinstance(lines, list):
        lines = pl.Series(lines, dtype=pl.Binary).cast(pl.String)
    if features is None:
        features = decode(lines, INPUT_SHAPES[family])
    df = features.with_columns(line=lines).with_row_index("idx")
    ok = pl.col("error").is_null()
    tool_rows = False
    if family is not Family.TITAN_EMBED_V2:
        df, tool_rows = _structured(df, family, breakage)
    if family is Family.TITAN_EMBED_V2:
        df = df.with_columns(
            embedding=embeddings(df["text"], df["dims"], df["normalize"]),
            input_tokens=((pl.col("text_bytes") + 3) // 4).clip(lower_bound=1),
            output_tokens=pl.lit(0, pl.Int64),
            truncated=pl.lit(False),
        )
    else:
        text_answer = pl.col("answer").is_not_null() & pl.col("tool").is_null()
        df = df.with_columns(
            full=pl.when(text_answer)
            .then(pl.col("answer"))
            .otherwise(pl.lit(REPLY_PREFIX) + pl.col("prompt").fill_null("")),
        ).with_columns(
            reply=pl.col("full").str.head(pl.col("max_tokens").fill_null(0).clip(upper_bound=1 << 40) * 4),
        )
        # A tool call's input is never cut; its size is what it costs in output tokens.
        called = pl.col("tool").is_not_null() & pl.col("answer").is_not_null()
        produced = pl.when(called).then(pl.col("answer")).otherwise(pl.col("reply"))
        df = _fit_bytes(df).with_columns(
            truncated=(pl.col("reply").str.len_chars() < pl.col("full").str.len_chars()) & ~called,
            input_tokens=((pl.col("text_bytes").fill_null(0) + pl.col("tool_bytes") + 3) // 4).clip(lower_bound=1),
            output_tokens=((produced.str.len_bytes().cast(pl.Int64) + 3) // 4).clip(lower_bound=1),
        )
    generated_id = pl.format("RECORD{}", (pl.col("idx") + 1).cast(pl.String).str.zfill(7))
    output = output_expr(family, model_id)
    stop = stop_reason_expr(family)
    if tool_rows and family in TOOL_FAMILIES:
        called = pl.col("tool").is_not_null() & pl.col("answer").is_not_null()
        output = pl.when(called).then(tool_output_expr(family, model_id)).otherwise(output)
        stop = pl.when(called).then(
            pl.when(pl.col("plain")).then(pl.lit("end_turn")).otherwise(pl.lit("tool_use"))
        ).otherwise(stop)
    return df.select(
        pl.col("record_id").fill_null(generated_id),
        _opened(df["line"]).alias("opened"),
        _glue(df, generated_id).alias("glue"),
        pl.when(ok).then(output).alias("output"),
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
        pl.when(ok).then(stop).alias("stop_reason"),
    )


def _opened(lines: pl.Series) -> pl.Series:
    """Each line without its closing brace: `{"recordId":"a","modelInput":{...}` (a view, not a copy,
    when no line has trailing blanks)."""
    if not lines.str.ends_with("}").all():
        lines = lines.str.strip_chars_end()
    return lines.str.head(-1)


def _glue(df: pl.DataFrame, generated_id: pl.Expr) -> pl.Expr:
    """What goes between a line's own members and `modelOutput`/`error`: a comma, and the generated
    `recordId` member for records without one. Only an undecodable record can be an empty object `{}`
    (no comma then); the costly check runs only when such records exist."""
    no_id = pl.col("record_id").is_null()
    empty: pl.Expr = pl.lit(False)
    if df.select((no_id & pl.col("error").is_not_null()).any()).item():
        empty = no_id & (pl.col("line").str.replace_all(r"\s", "") == "{}")
    comma = pl.when(empty).then(pl.lit("")).otherwise(pl.lit(","))
    return comma + pl.when(no_id).then(pl.format('"recordId":"{}",', generated_id)).otherwise(pl.lit(""))


def output_lines(df: pl.DataFrame, end: str = "") -> pl.Series:
    """Bedrock's `.jsonl.out` lines: the input line's members + `modelOutput`, or + `error`, then `end`,
    built in one pass over the frame (the lines are the biggest strings the emulator handles)."""
    error = pl.struct(pl.col("error_code").alias("errorCode"), pl.col("error_message").alias("errorMessage"))
    ok = pl.col("output").is_not_null()
    line = pl.concat_str(
        [
            pl.col("opened"),
            pl.col("glue"),
            pl.when(ok).then(pl.lit('"modelOutput":')),
            pl.col("output"),
            pl.when(~ok).then(pl.lit('"error":') + error.struct.json_encode()),
            pl.lit("}" + end),
        ],
        ignore_nulls=True,
    )
    return df.select(line.alias("line")).to_series()


def invoke_one(
    family: Family, model_id: str, body: bytes, breakage: Breakage | None = None
) -> dict[str, object]:
    """One record through the same pipeline (runtime InvokeModel/Converse): the row as a dict."""
    line = b'{"recordId":"invoke","modelInput":' + body.strip() + b"}"
    return generate(pl.Series([line.decode("utf-8", "replace")]), family, model_id, breakage=breakage).row(
        0, named=True
    )
