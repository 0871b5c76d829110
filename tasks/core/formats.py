"""Model families: how a prompt becomes a Bedrock request line and how an output line becomes a result row.

This is the facade the project calls; each family's format lives in its own module of `tasks/core/families/`
(a `FamilySpec`: request expression, `modelOutput` type, extractors, on-demand call, defaults), and what
is common to all of them (line encoding, robust decoding, error rows) lives here.

Everything here is columnar. A request line is one `pl.struct(...).struct.json_encode()` over the whole
frame (Polars escapes the text, in Rust); an output file is decoded with one `str.json_decode` against a
per-family schema that leaves the echoed `modelInput` out. The on-demand helpers (`invoke_request`,
`parse_invoke_response`) go through the same expressions on a one-row frame, so a repaired record is
built and parsed exactly like a batch record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import polars as pl

from tasks.core.families import (
    FAMILIES,
    InferenceSettings,
    ModelFamily,
    UnknownModelError,
    base_model_id,
    resolve_family,
    spec_of,
)

__all__ = [
    "ERROR_CODES_OWN",
    "FAMILIES",
    "MALFORMED_SNIPPET_CHARS",
    "RESULT_COLUMNS",
    "RETRYABLE_ERROR_CODES",
    "InferenceSettings",
    "ModelFamily",
    "UnknownModelError",
    "base_model_id",
    "build_lines",
    "decode_outputs",
    "invoke_request",
    "model_input_dtype",
    "model_input_expr",
    "output_columns",
    "parse_invoke_response",
    "parse_output_bytes",
    "parse_output_lines",
    "request_line_expr",
    "resolve_family",
    "result_schema",
    "results_with_output",
]


# Bedrock's record-level errors worth another attempt, plus our own codes for rows that never ran.
# `invalid_output` (an answer outside the template's output_schema) is retried too: models answer again
# differently, and a repair round costs only the few records that need it.
RETRYABLE_ERROR_CODES: frozenset[str] = frozenset(
    {"408", "424", "429", "500", "502", "503", "504", "missing", "expired", "job_failed", "malformed_output",
     "request_mismatch", "invalid_output"}
)
ERROR_CODES_OWN = ("missing", "malformed_output", "invalid_input", "job_failed", "expired", "request_mismatch",
                   "invalid_output", "cancelled")

RESULT_COLUMNS = ("error_code", "error_message", "input_tokens", "output_tokens", "stop_reason")
MALFORMED_SNIPPET_CHARS = 200


# --------------------------------------------------------------------------------------------- requests


def model_input_expr(family: ModelFamily, settings: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    """The `modelInput` struct for every row; optional parameters are omitted, never sent as null. A
    structured family (`family.output_schema`) forces its schema in the family's own way."""
    spec, schema = spec_of(family), family.schema
    if schema is not None:
        return spec.structured_input(settings, prompt, schema)
    return spec.model_input(settings, prompt)


def model_input_dtype(family: ModelFamily, settings: InferenceSettings) -> pl.DataType:
    """The Polars type of the `modelInput` struct `model_input_expr` builds."""
    return pl.select(model_input_expr(family, settings, pl.lit("", dtype=pl.String))).to_series().dtype


def request_line_expr(
    family: ModelFamily, settings: InferenceSettings, *, record_id: str = "record_id", prompt: str = "prompt"
) -> pl.Expr:
    """One JSONL line per row, `{"recordId": ..., "modelInput": {...}}`, encoded by Polars in bulk."""
    body = model_input_expr(family, settings, pl.col(prompt)).struct.json_encode()
    return request_line_from(pl.col(record_id), body).alias("line")


def request_line_from(record_id: pl.Expr, model_input_json: pl.Expr) -> pl.Expr:
    """`{"recordId":"<id>","modelInput":<model_input_json>}`: the line around an already encoded model
    input (byte for byte what encoding the two as one struct gives), so that the model input's JSON can
    be kept, hashed or checked without decoding or copying the line."""
    head = pl.struct(recordId=record_id).struct.json_encode().str.strip_suffix("}")
    return pl.concat_str([head, pl.lit(',"modelInput":'), model_input_json, pl.lit("}")])


def build_lines(lf: pl.LazyFrame, family: ModelFamily, settings: InferenceSettings) -> pl.LazyFrame:
    """`record_id`, `line` and `line_bytes` (UTF-8 length including the newline) for each row."""
    line = request_line_expr(family, settings)
    return lf.select(
        pl.col("record_id"),
        line,
    ).with_columns(line_bytes=pl.col("line").str.len_bytes().cast(pl.Int64) + 1)


# ---------------------------------------------------------------------------------------------- outputs


def _line_dtype(family: ModelFamily, *, tool_text: bool = False) -> pl.Struct:
    """The output line's type. `tool_text`: a structured tool family's output type, whose tool call input
    is read as text (only Polars' NDJSON reader turns an object into its JSON text for a String field)."""
    spec = spec_of(family)
    output = spec.structured_dtype if tool_text and family.schema and spec.structured_dtype else spec.output_dtype
    # `modelInput` is deliberately absent: it echoes the (long) prompt and we never need it back.
    return pl.Struct(
        {
            "recordId": pl.String,
            "modelOutput": output,
            "error": pl.Struct({"errorCode": pl.String, "errorMessage": pl.String}),
        }
    )


def output_columns(family: ModelFamily) -> dict[str, pl.DataType]:
    """`output` (the schema's Struct) for a structured family, else nothing. Kept apart from
    `result_schema`: the answer cache stores `response` and the output is decoded from it again."""
    schema = family.schema
    return {"output": schema.dtype} if schema is not None else {}


def results_with_output(family: ModelFamily) -> dict[str, pl.DataType]:
    """`result_schema` with `output` after the result column, as result rows and parts carry them."""
    out: dict[str, pl.DataType] = {}
    for name, dtype in result_schema(family).items():
        out[name] = dtype
        if name == family.result_column:
            out.update(output_columns(family))
    return out


def result_schema(family: ModelFamily) -> dict[str, pl.DataType]:
    """The result columns every output row carries (after the input columns)."""
    return {
        family.result_column: family.result_dtype,
        "error_code": pl.String(),
        "error_message": pl.String(),
        "input_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "stop_reason": pl.String(),
    }


def _decode_robust(lines: pl.Series, dtype: pl.Struct) -> pl.Series:
    """Decode JSON lines to `dtype`; a line that cannot be decoded becomes null.

    One vectorised decode in the normal case. `str.json_decode` fails the whole column on one bad line,
    so when that happens the column is halved until the bad lines are isolated: O(bad * log n) decodes,
    never a Python loop over rows.
    """
    try:
        return lines.str.json_decode(dtype)
    except pl.exceptions.PolarsError:
        if len(lines) <= 1:
            return pl.Series(lines.name, [None] * len(lines), dtype=dtype)
        mid = len(lines) // 2
        return pl.concat([_decode_robust(lines[:mid], dtype), _decode_robust(lines[mid:], dtype)])


_RECORD_ID_RE = r'"recordId"\s*:\s*"((?:[^"\\]|\\.)*)"'


def parse_output_lines(lines: pl.DataFrame, family: ModelFamily, *, suspect: bool = False) -> pl.DataFrame:
    """Parse a `.jsonl.out` file (one Utf8 `line` per row) into one result row per line.

    Columns: `record_id`, `response` | `embedding`, `error_code`, `error_message`, `input_tokens`,
    `output_tokens`, `stop_reason`, in line order. A line that is not JSON or has no recordId gets
    `error_code="malformed_output"` and its start in `error_message`; its `record_id` is recovered with a
    regex when possible (else null: the caller counts those as unattributable). `suspect=True` skips the
    optimistic whole-column decode when the caller already knows some line is bad.
    """
    df = lines.select(pl.col("line").cast(pl.String)).filter(pl.col("line").str.strip_chars().str.len_bytes() > 0)
    line = pl.col("line")
    dtype = _line_dtype(family)
    answer_path = spec_of(family).answer_path if family.schema is not None else None
    decoded: pl.Series | None = None
    if not suspect:
        try:  # the normal case: one decode of the whole file
            decoded = df.get_column("line").str.json_decode(dtype)
        except pl.exceptions.PolarsError:
            decoded = None
    if decoded is None:
        # json_path_match yields null (not an error) for a line that is not JSON: drop those first, so
        # the bisection below only has to find lines that are JSON of an unexpected shape.
        decodable = df.select(pl.when(line.str.json_path_match("$.recordId").is_not_null()).then(line))
        decoded = _decode_robust(decodable.to_series(), dtype)
    answer = line.str.json_path_match(answer_path) if answer_path else None
    return _structure(_results(df.with_columns(decoded.alias("_d")), family, answer), family, None)


def parse_output_bytes(data: bytes, family: ModelFamily) -> pl.DataFrame:
    """`parse_output_lines` for a whole `.jsonl.out` file's bytes, via Polars' parallel NDJSON reader.

    About twice as fast as decoding a column of lines; the reader refuses the whole file on one bad
    line, in which case the file is split into lines and parsed line-wise (same result either way).
    """
    spec = spec_of(family)
    tool_text = family.schema is not None and spec.structured_dtype is not None
    dtype = _line_dtype(family, tool_text=tool_text)
    blank = not data or data.isspace()  # stops at the first other byte: no copy, no full scan
    try:
        decoded = None if blank else pl.read_ndjson(data, schema=dtype.to_schema())
    except pl.exceptions.PolarsError:
        decoded = None
    if decoded is not None and decoded.get_column("recordId").null_count() == 0:
        frame = decoded.select(pl.lit(None, dtype=pl.String).alias("line"), pl.struct(pl.all()).alias("_d"))
        answer = spec.structured_answer(pl.col("_d").struct.field("modelOutput")) if tool_text else None
        assert not tool_text or spec.structured_answer is not None, f"{family.name}: structured_answer missing"
        return _structure(_results(frame, family, answer), family, data)
    lines = pl.DataFrame(schema={"line": pl.String}) if blank else pl.read_lines(data, name="line")
    return parse_output_lines(lines, family, suspect=decoded is None)


_ESCAPED = r"[\\\x00-\x1f]"


def _structure(results: pl.DataFrame, family: ModelFamily, data: bytes | None) -> pl.DataFrame:
    """Decode and validate the answers of a structured family (`tasks/core/schema.py`): `output` after
    `response`; an answer outside the schema becomes `invalid_output`, its message naming the field.

    `__answer` holds a tool call's input as JSON text. From the fast NDJSON read (`data` given) it is
    Polars' rendering, exact unless the value has a backslash or control character (Polars leaves those
    unescaped): for those few records the exact JSON is read again from their lines. `response` keeps the
    answer's text: the tool input's JSON, or the text the model answered instead.
    """
    schema = family.schema
    if schema is None:
        return results.drop("__answer", strict=False)
    spec = spec_of(family)
    if "__answer" in results.columns and data is not None and spec.answer_path:
        risky = results.select(pl.col("__answer").str.contains(_ESCAPED).fill_null(False)).to_series()
        if risky.any():
            lines = pl.read_lines(data, name="line").filter(pl.col("line").str.strip_chars().str.len_bytes() > 0)
            if lines.height == results.height:
                idx = risky.arg_true()
                exact = lines["line"].gather(idx).str.json_path_match(spec.answer_path)
                results = results.with_columns(results["__answer"].scatter(idx, exact))
            else:  # cannot happen for a file the reader took whole; stay exact whatever it costs
                return parse_output_lines(lines, family, suspect=True)
    if "__answer" in results.columns:
        ok = pl.col("error_code").is_null()
        results = results.with_columns(
            pl.when(ok).then(pl.coalesce("__answer", "response")).otherwise(pl.col("response")).alias("response")
        ).drop("__answer")
    return decode_outputs(results, family).select("record_id", *results_with_output(family))


def decode_outputs(frame: pl.DataFrame, family: ModelFamily) -> pl.DataFrame:
    """Add `output` decoded from `response` where the row has no error; an answer outside the schema gets
    `error_code="invalid_output"` and a message naming the field (plus a hint when it was cut short)."""
    schema = family.schema
    if schema is None:
        return frame
    ok = pl.col("error_code").is_null() if "error_code" in frame.columns else pl.lit(True)
    decoded = schema.decode(frame.select(pl.when(ok).then(pl.col(family.result_column))).to_series())
    error = pl.lit(decoded["error"])
    if "stop_reason" in frame.columns:
        cut = pl.col("stop_reason").is_in(["max_tokens", "length"]).fill_null(False)
        error = pl.when(cut).then(error + pl.lit(" (the answer was cut at max_tokens: raise max_tokens)")).otherwise(
            error
        )
    bad = ok & decoded["error"].is_not_null()
    code = pl.col("error_code") if "error_code" in frame.columns else pl.lit(None, pl.String)
    message = pl.col("error_message") if "error_message" in frame.columns else pl.lit(None, pl.String)
    return frame.with_columns(
        pl.when(bad).then(pl.lit("invalid_output")).otherwise(code).alias("error_code"),
        pl.when(bad).then(error).otherwise(message).alias("error_message"),
        pl.when(ok).then(pl.lit(decoded["output"])).alias("output"),
    )


def _results(df: pl.DataFrame, family: ModelFamily, answer: pl.Expr | None = None) -> pl.DataFrame:
    """Result rows from `line` (raw text, for error snippets) and `_d` (the decoded struct or null);
    `answer` adds `__answer` (a structured tool family's tool input, as text)."""
    line = pl.col("line")
    d = pl.col("_d").struct.field
    err = d("error").struct.field
    extracted = spec_of(family).extract(d("modelOutput"))
    result_col = family.result_column
    malformed = pl.col("_d").is_null() | d("recordId").is_null()
    no_output = d("modelOutput").is_null() & d("error").is_null()
    has_error = d("error").is_not_null()
    empty_result = extracted[result_col].is_null() & ~has_error

    error_code = (
        pl.when(malformed | no_output | empty_result)
        .then(pl.lit("malformed_output"))
        .when(has_error)
        .then(err("errorCode").fill_null("unknown"))
        .otherwise(None)
    )
    snippet = line.str.slice(0, MALFORMED_SNIPPET_CHARS)
    error_message = (
        pl.when(malformed)
        .then(pl.concat_str([pl.lit("malformed output line: "), snippet]))
        .when(has_error)
        .then(err("errorMessage"))
        .when(no_output)
        .then(pl.lit("output line has neither modelOutput nor error"))
        .when(empty_result)
        .then(pl.lit(f"modelOutput has no {result_col}"))
        .otherwise(None)
    )
    ok = ~(malformed | has_error | no_output | empty_result)
    schema = result_schema(family)
    return df.select(
        pl.when(malformed).then(line.str.extract(_RECORD_ID_RE, 1)).otherwise(d("recordId")).alias("record_id"),
        pl.when(ok).then(extracted[result_col]).otherwise(None).cast(schema[result_col]).alias(result_col),
        error_code.cast(pl.String).alias("error_code"),
        error_message.cast(pl.String).alias("error_message"),
        pl.when(malformed).then(None).otherwise(extracted["input_tokens"]).cast(pl.Int64).alias("input_tokens"),
        pl.when(malformed).then(None).otherwise(extracted["output_tokens"]).cast(pl.Int64).alias("output_tokens"),
        pl.when(malformed).then(None).otherwise(extracted["stop_reason"]).cast(pl.String).alias("stop_reason"),
        *([pl.when(ok).then(answer).cast(pl.String).alias("__answer")] if answer is not None else []),
    )


# ------------------------------------------------------------------------------------------- on-demand


def invoke_request(family: ModelFamily, settings: InferenceSettings, prompt: str) -> tuple[str, dict[str, Any]]:
    """The bedrock-runtime call for one record: (`"invoke_model"` | `"converse"`, kwargs without modelId).

    `invoke_model` kwargs are just `{"body": bytes}` (JSON; the caller adds modelId and may add
    contentType/accept); `converse` kwargs are `messages`, `system`?, `inferenceConfig`.

    The body comes from the same expression as the batch lines, so batch and repair requests agree.
    """
    frame = pl.DataFrame(
        {"record_id": ["on-demand"], "prompt": [prompt]}, schema={"record_id": pl.String, "prompt": pl.String}
    )
    line = build_lines(frame.lazy(), family, settings).collect().item(0, "line")
    return spec_of(family).on_demand_request(orjson.loads(line)["modelInput"])


def parse_invoke_response(family: ModelFamily, response: Mapping[str, Any]) -> dict[str, Any]:
    """One result row (without record_id) from an `invoke_model` or `converse` response."""
    output = spec_of(family).on_demand_output(response)
    line = orjson.dumps({"recordId": "on-demand", "modelOutput": output}).decode()
    row = parse_output_lines(pl.DataFrame({"line": [line]}), family).row(0, named=True)
    row.pop("record_id")
    return row
