"""Model families: how a prompt becomes a Bedrock request line and how an output line becomes a result row.

Everything here is columnar. A request line is one `pl.struct(...).struct.json_encode()` over the whole
frame (Polars escapes the text, in Rust); an output file is decoded with one `str.json_decode` against a
per-family schema that leaves the echoed `modelInput` out. The on-demand helpers (`invoke_request`,
`parse_invoke_response`) go through the same expressions on a one-row frame, so a repaired record is
built and parsed exactly like a batch record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
import polars as pl


class UnknownModelError(ValueError):
    """The model id maps to no request format we know."""


@dataclass(frozen=True)
class ModelFamily:
    """A request/response format. `kind` decides whether results carry `response` or `embedding`."""

    name: str
    kind: str  # "text" | "embedding"

    @property
    def result_column(self) -> str:
        return "embedding" if self.kind == "embedding" else "response"

    @property
    def result_dtype(self) -> pl.DataType:
        return pl.List(pl.Float32) if self.kind == "embedding" else pl.String()


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("claude", "text"),
        ModelFamily("nova", "text"),
        ModelFamily("converse", "text"),
        ModelFamily("llama", "text"),
        ModelFamily("mistral", "text"),
        ModelFamily("mistral_chat", "text"),
        ModelFamily("titan_embed", "embedding"),
    )
}

_FAMILY_HELP = (
    "claude (anthropic.claude-*), nova (amazon.nova-*), llama (meta.llama*), mistral (mistral.mistral-7b, "
    "mixtral, mistral-small, mistral-large-2402), mistral_chat (mistral.mistral-large-2407+, pixtral), "
    "titan_embed (amazon.titan-embed-text-v2:0)"
)

# System-defined cross-region inference profiles prefix the model id with a geography.
_GEO_PREFIX = re.compile(r"^(?:us|eu|apac|global|us-gov|ca|jp|au)\.")

# Bedrock's record-level errors worth another attempt, plus our own codes for rows that never ran.
RETRYABLE_ERROR_CODES: frozenset[str] = frozenset(
    {"408", "424", "429", "500", "502", "503", "504", "missing", "expired", "job_failed", "malformed_output",
     "request_mismatch"}
)
ERROR_CODES_OWN = ("missing", "malformed_output", "invalid_input", "job_failed", "expired", "request_mismatch")

RESULT_COLUMNS = ("error_code", "error_message", "input_tokens", "output_tokens", "stop_reason")
MALFORMED_SNIPPET_CHARS = 200


def base_model_id(model_id: str) -> str:
    """The foundation-model id behind a plain id, a geo inference-profile id or a Bedrock ARN."""
    value = model_id.strip()
    if value.startswith("arn:"):
        resource = value.split(":", 5)[-1]
        kind, _, value = resource.partition("/")
        if kind not in ("foundation-model", "inference-profile"):
            raise UnknownModelError(
                f"cannot tell the request format of {model_id!r} (a {kind} ARN names no model family); "
                f"use --invocation-type Converse, which works for any chat model"
            )
    return _GEO_PREFIX.sub("", value.lower())


def resolve_family(model_id: str, invocation_type: str = "InvokeModel") -> ModelFamily:
    """Pick the request/response format for a model id, inference-profile id or ARN."""
    kind = invocation_type.strip().lower()
    if kind not in ("invokemodel", "converse"):
        raise ValueError(f"invocation type must be InvokeModel or Converse, not {invocation_type!r}")
    try:
        base = base_model_id(model_id)
    except UnknownModelError:
        if kind == "converse":  # an application profile or provisioned model: Converse needs no family
            return FAMILIES["converse"]
        raise
    if base.startswith("amazon.titan-embed-text-v2"):
        if kind == "converse":
            raise UnknownModelError(f"{model_id!r} is an embedding model; Converse serves chat models only")
        return FAMILIES["titan_embed"]
    if kind == "converse":
        return FAMILIES["converse"]
    if base.startswith("anthropic.claude"):
        return FAMILIES["claude"]
    if base.startswith("amazon.nova-") and "embed" not in base and "sonic" not in base:
        return FAMILIES["nova"]
    if base.startswith("meta.llama"):
        return FAMILIES["llama"]
    if base.startswith("mistral."):
        chat = base.startswith("mistral.pixtral") or (
            base.startswith("mistral.mistral-large") and not base.startswith("mistral.mistral-large-2402")
        )
        return FAMILIES["mistral_chat" if chat else "mistral"]
    raise UnknownModelError(
        f"unknown model {model_id!r}: supported families are {_FAMILY_HELP}; "
        f"for any other chat model use --invocation-type Converse"
    )


@dataclass(frozen=True)
class InferenceSettings:
    """Inference parameters shared by every record of a run (the request body's constant part)."""

    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    system: str | None = None
    dimensions: int = 1024
    normalize: bool = True

    @classmethod
    def from_options(cls, template: Any = None, **given: Any) -> InferenceSettings:
        """Explicit options (non-None) > the template's defaults > the built-in defaults."""
        values: dict[str, Any] = {}
        for name in ("max_tokens", "temperature", "top_p", "system"):
            value = given.get(name)
            if value is None and template is not None:
                value = getattr(template, name, None)
            if value is not None:
                values[name] = value
        for name in ("dimensions", "normalize"):
            if given.get(name) is not None:
                values[name] = given[name]
        unknown = set(given) - {"max_tokens", "temperature", "top_p", "system", "dimensions", "normalize"}
        if unknown:
            raise TypeError(f"unknown inference options: {sorted(unknown)}")
        return cls(**values)

    def with_template(self, template: Any) -> InferenceSettings:
        """Fill the unset (None) fields from a template; an explicit value always wins."""
        if template is None:
            return self
        fill = {
            name: getattr(template, name)
            for name in ("temperature", "top_p", "system")
            if getattr(self, name) is None and getattr(template, name, None) is not None
        }
        return replace(self, **fill) if fill else self


# --------------------------------------------------------------------------------------------- requests


def _lit_int(value: int) -> pl.Expr:
    return pl.lit(int(value), dtype=pl.Int64)


def _lit_float(value: float) -> pl.Expr:
    return pl.lit(float(value), dtype=pl.Float64)


def _user_messages(prompt: pl.Expr, *, typed: bool) -> pl.Expr:
    """`[{"role": "user", "content": [{"type"?: "text", "text": prompt}]}]` as a list-of-struct column."""
    block = pl.struct(type=pl.lit("text"), text=prompt) if typed else pl.struct(text=prompt)
    return pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.concat_list(block)))


def _struct(fields: Mapping[str, pl.Expr]) -> pl.Expr:
    return pl.struct(**fields)


def model_input_expr(family: ModelFamily, settings: InferenceSettings, prompt: pl.Expr) -> pl.Expr:
    """The `modelInput` struct for every row; optional parameters are omitted, never sent as null."""
    s = settings
    name = family.name
    if name == "claude":
        fields: dict[str, pl.Expr] = {
            "anthropic_version": pl.lit("bedrock-2023-05-31"),
            "max_tokens": _lit_int(s.max_tokens),
        }
        if s.system is not None:
            fields["system"] = pl.lit(s.system)
        fields["messages"] = _user_messages(prompt, typed=True)
        if s.temperature is not None:
            fields["temperature"] = _lit_float(s.temperature)
        if s.top_p is not None:
            fields["top_p"] = _lit_float(s.top_p)
        return _struct(fields)
    if name in ("nova", "converse"):
        fields = {"schemaVersion": pl.lit("messages-v1")} if name == "nova" else {}
        fields["messages"] = _user_messages(prompt, typed=False)
        if s.system is not None:
            fields["system"] = pl.concat_list(pl.struct(text=pl.lit(s.system)))
        config = {"maxTokens": _lit_int(s.max_tokens)}
        if s.temperature is not None:
            config["temperature"] = _lit_float(s.temperature)
        if s.top_p is not None:
            config["topP"] = _lit_float(s.top_p)
        fields["inferenceConfig"] = _struct(config)
        return _struct(fields)
    if name == "llama":
        # Llama 3+ instruct models expect their chat template in the raw prompt (no system field).
        head = "<|begin_of_text|>"
        if s.system is not None:
            head += f"<|start_header_id|>system<|end_header_id|>\n\n{s.system}<|eot_id|>"
        head += "<|start_header_id|>user<|end_header_id|>\n\n"
        tail = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        fields = {
            "prompt": pl.concat_str([pl.lit(head), prompt, pl.lit(tail)]),
            "max_gen_len": _lit_int(s.max_tokens),
        }
        if s.temperature is not None:
            fields["temperature"] = _lit_float(s.temperature)
        if s.top_p is not None:
            fields["top_p"] = _lit_float(s.top_p)
        return _struct(fields)
    if name == "mistral":
        head = "<s>[INST] " + (f"{s.system}\n\n" if s.system is not None else "")
        fields = {
            "prompt": pl.concat_str([pl.lit(head), prompt, pl.lit(" [/INST]")]),
            "max_tokens": _lit_int(s.max_tokens),
        }
        if s.temperature is not None:
            fields["temperature"] = _lit_float(s.temperature)
        if s.top_p is not None:
            fields["top_p"] = _lit_float(s.top_p)
        return _struct(fields)
    if name == "mistral_chat":
        user = pl.struct(role=pl.lit("user"), content=prompt)
        messages = (
            pl.concat_list(pl.struct(role=pl.lit("system"), content=pl.lit(s.system)), user)
            if s.system is not None
            else pl.concat_list(user)
        )
        fields = {"messages": messages, "max_tokens": _lit_int(s.max_tokens)}
        if s.temperature is not None:
            fields["temperature"] = _lit_float(s.temperature)
        if s.top_p is not None:
            fields["top_p"] = _lit_float(s.top_p)
        return _struct(fields)
    if name == "titan_embed":
        if s.dimensions not in (256, 512, 1024):
            raise ValueError(f"Titan Text Embeddings V2 dimensions must be 256, 512 or 1024, not {s.dimensions}")
        return _struct(
            {
                "inputText": prompt,
                "dimensions": _lit_int(s.dimensions),
                "normalize": pl.lit(bool(s.normalize)),
            }
        )
    raise UnknownModelError(f"no request format for family {name!r}")


def model_input_dtype(family: ModelFamily, settings: InferenceSettings) -> pl.DataType:
    """The Polars type of the `modelInput` struct `model_input_expr` builds."""
    return pl.select(model_input_expr(family, settings, pl.lit("", dtype=pl.String))).to_series().dtype


def request_line_expr(
    family: ModelFamily, settings: InferenceSettings, *, record_id: str = "record_id", prompt: str = "prompt"
) -> pl.Expr:
    """One JSONL line per row, `{"recordId": ..., "modelInput": {...}}`, encoded by Polars in bulk."""
    body = model_input_expr(family, settings, pl.col(prompt))
    return pl.struct(recordId=pl.col(record_id), modelInput=body).struct.json_encode().alias("line")


def build_lines(lf: pl.LazyFrame, family: ModelFamily, settings: InferenceSettings) -> pl.LazyFrame:
    """`record_id`, `line` and `line_bytes` (UTF-8 length including the newline) for each row."""
    line = request_line_expr(family, settings)
    return lf.select(
        pl.col("record_id"),
        line,
    ).with_columns(line_bytes=pl.col("line").str.len_bytes().cast(pl.Int64) + 1)


# ---------------------------------------------------------------------------------------------- outputs

_TEXT_BLOCKS = pl.List(pl.Struct({"text": pl.String}))
_OUTPUT_DTYPES: dict[str, pl.DataType] = {
    "claude": pl.Struct(
        {
            "content": _TEXT_BLOCKS,
            "stop_reason": pl.String,
            "usage": pl.Struct({"input_tokens": pl.Int64, "output_tokens": pl.Int64}),
        }
    ),
    "nova": pl.Struct(
        {
            "output": pl.Struct({"message": pl.Struct({"content": _TEXT_BLOCKS})}),
            "stopReason": pl.String,
            "usage": pl.Struct({"inputTokens": pl.Int64, "outputTokens": pl.Int64}),
        }
    ),
    "llama": pl.Struct(
        {
            "generation": pl.String,
            "prompt_token_count": pl.Int64,
            "generation_token_count": pl.Int64,
            "stop_reason": pl.String,
        }
    ),
    "mistral": pl.Struct({"outputs": pl.List(pl.Struct({"text": pl.String, "stop_reason": pl.String}))}),
    "mistral_chat": pl.Struct(
        {
            "choices": pl.List(pl.Struct({"message": pl.Struct({"content": pl.String}), "stop_reason": pl.String})),
            "usage": pl.Struct({"prompt_tokens": pl.Int64, "completion_tokens": pl.Int64}),
        }
    ),
    "titan_embed": pl.Struct({"embedding": pl.List(pl.Float64), "inputTextTokenCount": pl.Int64}),
}
_OUTPUT_DTYPES["converse"] = _OUTPUT_DTYPES["nova"]


def _line_dtype(family: ModelFamily) -> pl.Struct:
    # `modelInput` is deliberately absent: it echoes the (long) prompt and we never need it back.
    return pl.Struct(
        {
            "recordId": pl.String,
            "modelOutput": _OUTPUT_DTYPES[family.name],
            "error": pl.Struct({"errorCode": pl.String, "errorMessage": pl.String}),
        }
    )


def _join_text(blocks: pl.Expr) -> pl.Expr:
    return blocks.list.eval(pl.element().struct.field("text").drop_nulls()).list.join("")


def _extract(family: ModelFamily, out: pl.Expr) -> dict[str, pl.Expr]:
    """Result, token counts and stop reason from a decoded `modelOutput` struct."""
    f = out.struct.field
    none_i = pl.lit(None, dtype=pl.Int64)
    name = family.name
    if name == "claude":
        usage = f("usage").struct.field
        return {
            "response": _join_text(f("content")),
            "input_tokens": usage("input_tokens"),
            "output_tokens": usage("output_tokens"),
            "stop_reason": f("stop_reason"),
        }
    if name in ("nova", "converse"):
        usage = f("usage").struct.field
        return {
            "response": _join_text(f("output").struct.field("message").struct.field("content")),
            "input_tokens": usage("inputTokens"),
            "output_tokens": usage("outputTokens"),
            "stop_reason": f("stopReason"),
        }
    if name == "llama":
        return {
            "response": f("generation"),
            "input_tokens": f("prompt_token_count"),
            "output_tokens": f("generation_token_count"),
            "stop_reason": f("stop_reason"),
        }
    if name == "mistral":
        first = f("outputs").list.first()
        return {
            "response": first.struct.field("text"),
            "input_tokens": none_i,
            "output_tokens": none_i,
            "stop_reason": first.struct.field("stop_reason"),
        }
    if name == "mistral_chat":
        first = f("choices").list.first()
        usage = f("usage").struct.field
        return {
            "response": first.struct.field("message").struct.field("content"),
            "input_tokens": usage("prompt_tokens"),
            "output_tokens": usage("completion_tokens"),
            "stop_reason": first.struct.field("stop_reason"),
        }
    if name == "titan_embed":
        return {
            "embedding": f("embedding").cast(pl.List(pl.Float32)),
            "input_tokens": f("inputTextTokenCount"),
            "output_tokens": none_i,
            "stop_reason": pl.lit(None, dtype=pl.String),
        }
    raise UnknownModelError(f"no output format for family {name!r}")


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
    return _results(df.with_columns(decoded.alias("_d")), family)


def parse_output_bytes(data: bytes, family: ModelFamily) -> pl.DataFrame:
    """`parse_output_lines` for a whole `.jsonl.out` file's bytes, via Polars' parallel NDJSON reader.

    About twice as fast as decoding a column of lines; the reader refuses the whole file on one bad
    line, in which case the file is split into lines and parsed line-wise (same result either way).
    """
    dtype = _line_dtype(family)
    blank = not data or data.isspace()  # stops at the first other byte: no copy, no full scan
    try:
        decoded = None if blank else pl.read_ndjson(data, schema=dtype.to_schema())
    except pl.exceptions.PolarsError:
        decoded = None
    if decoded is not None and decoded.get_column("recordId").null_count() == 0:
        frame = decoded.select(pl.lit(None, dtype=pl.String).alias("line"), pl.struct(pl.all()).alias("_d"))
        return _results(frame, family)
    lines = pl.DataFrame(schema={"line": pl.String}) if blank else pl.read_lines(data, name="line")
    return parse_output_lines(lines, family, suspect=decoded is None)


def _results(df: pl.DataFrame, family: ModelFamily) -> pl.DataFrame:
    """Result rows from `line` (raw text, for error snippets) and `_d` (the decoded struct or null)."""
    line = pl.col("line")
    d = pl.col("_d").struct.field
    err = d("error").struct.field
    extracted = _extract(family, d("modelOutput"))
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
    body = orjson.loads(line)["modelInput"]
    if family.name == "converse":
        return "converse", body
    return "invoke_model", {"body": orjson.dumps(body)}


def parse_invoke_response(family: ModelFamily, response: Mapping[str, Any]) -> dict[str, Any]:
    """One result row (without record_id) from an `invoke_model` or `converse` response."""
    if family.name == "converse":
        output = {k: v for k, v in response.items() if k in ("output", "stopReason", "usage")}
    else:
        body = response.get("body", response)
        if hasattr(body, "read"):
            body = body.read()
        output = orjson.loads(body) if isinstance(body, (bytes, bytearray, str)) else dict(body)
    line = orjson.dumps({"recordId": "on-demand", "modelOutput": output}).decode()
    row = parse_output_lines(pl.DataFrame({"line": [line]}), family).row(0, named=True)
    row.pop("record_id")
    return row


def error_row(family: ModelFamily, error_code: str, error_message: str) -> dict[str, Any]:
    """A result row for a record that failed outside any model output (e.g. a runtime ClientError)."""
    return {
        family.result_column: None,
        "error_code": error_code,
        "error_message": error_message,
        "input_tokens": None,
        "output_tokens": None,
        "stop_reason": None,
    }
