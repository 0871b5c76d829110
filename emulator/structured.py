"""Schema requests: deterministic answers that follow a JSON Schema, and seeded broken ones.

A record asks for a structured answer in one of two ways (emulator/README.md, "Structured outputs"):

- a **forced tool**: Claude `tools` + `tool_choice {"type": "tool", "name"}`, Nova / Converse `toolConfig`
  with `toolChoice {"tool": {"name"}}`. The answer is a tool call whose `input` follows the tool's schema;
- a **schema line** in the prompt (any text family): a line starting `JSON Schema: {...}`. The answer is
  that JSON as the reply text.

Values come from hashes of the prompt (fixed per prompt and schema path), so a test can recompute them:
string `"<field>-<n>"`, integer `n % 100`, number `(n % 1000) / 1000`, boolean `n % 2 == 0`, enum
`values[n % len]`, arrays of 1-3 items; every property is filled. With `invalid_output_rate`, that share
of answers (a seeded draw per record and job) breaks the schema in one of four ways, chosen by a second
draw: a required field left out, a field of the wrong type, a value outside an enum, or plain text.

Schemas are parsed in Python once per distinct schema (a job usually has one); everything per record is a
Polars expression.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

SCHEMA_LINE_RE = r"(?m)^JSON Schema: (\{[^\n]*\})"
PLAIN_TEXT = "I am sorry, but I cannot answer that in the requested format."
BREAKAGES = ("missing_field", "wrong_type", "outside_enum", "plain_text")
PLACEHOLDER = "\u0000bedrock-emulator-content\u0000"


@dataclass(frozen=True)
class Breakage:
    """Which answers break: `rate` of them, drawn from (seed, key, record id)."""

    rate: float
    seed: int
    key: str


def _salt(path: str) -> int:
    return zlib.crc32(path.encode())


def _n(path: str) -> pl.Expr:
    """A number fixed by the prompt and the schema path."""
    return pl.col("prompt").fill_null("").hash(seed=_salt(path))


def value_expr(node: Any, path: str, name: str) -> pl.Expr:
    """A valid value of a schema node (a JSON Schema dict), as an expression over the prompt."""
    if not isinstance(node, dict):
        return pl.lit(None, pl.String)
    n = _n(path)
    if "enum" in node and isinstance(node["enum"], list) and node["enum"]:
        values = [pl.lit(v) for v in node["enum"]]
        return pl.concat_list(values).list.get((n % len(values)).cast(pl.Int64))
    kind = node.get("type")
    if kind == "string":
        return pl.format("{}-{}", pl.lit(name), (n % 10_000).cast(pl.String))
    if kind == "integer":
        return (n % 100).cast(pl.Int64)
    if kind == "number":
        return ((n % 1000).cast(pl.Float64) / 1000).round(3)
    if kind == "boolean":
        return (n % 2) == 0
    if kind == "array":
        items = [value_expr(node.get("items"), f"{path}[{i}]", name) for i in range(3)]
        return pl.concat_list(items).list.head((n % 3 + 1).cast(pl.Int64))
    if kind == "object" and isinstance(node.get("properties"), dict) and node["properties"]:
        return pl.struct(
            [value_expr(sub, f"{path}.{key}", key).alias(key) for key, sub in node["properties"].items()]
        )
    return pl.lit(None, pl.String)


def _wrong(node: Any) -> pl.Expr:
    kind = node.get("type") if isinstance(node, dict) else None
    if (isinstance(node, dict) and "enum" in node) or kind == "string":
        return pl.lit(42)
    if kind in ("integer", "number"):
        return pl.lit("forty-two")
    if kind == "boolean":
        return pl.lit("yes")
    kind = str(kind or "value")
    return pl.lit(f"not an {kind}" if kind[0] in "aeiou" else f"not a {kind}")


def _object_with(schema: dict[str, Any], replace: dict[str, pl.Expr | None]) -> pl.Expr:
    """The top-level object with some properties replaced (a None drops the property)."""
    fields = []
    for key, sub in schema["properties"].items():
        if key in replace:
            if replace[key] is not None:
                fields.append(replace[key].alias(key))  # type: ignore[union-attr]
            continue
        fields.append(value_expr(sub, key, key).alias(key))
    if not fields:
        return pl.lit("{}")
    return pl.struct(fields).struct.json_encode()


def answers(schema: dict[str, Any], broken: pl.Expr | None) -> tuple[pl.Expr, pl.Expr]:
    """(answer JSON text, is plain text) for one schema; `broken` is the breakage index per row (null:
    a valid answer)."""
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
    if schema.get("type") != "object" or not props:
        # Not an object schema: a plain JSON value is all that can be given.
        return value_expr(schema, "", "value").cast(pl.String), pl.lit(False)
    valid = _object_with(schema, {})
    if broken is None:
        return valid, pl.lit(False)
    names = list(props)
    required = [r for r in schema.get("required", []) if r in props]
    missing = _object_with(schema, {(required or names)[0]: None})
    wrong = _object_with(schema, {names[0]: _wrong(props[names[0]])})
    enum_field = next((k for k, v in props.items() if isinstance(v, dict) and "enum" in v), None)
    outside = _object_with(schema, {enum_field: pl.lit("not-a-listed-value")}) if enum_field else wrong
    text = (
        pl.when(broken == 0).then(missing).when(broken == 1).then(wrong).when(broken == 2).then(outside)
        .when(broken == 3).then(pl.lit(PLAIN_TEXT)).otherwise(valid)
    )
    return text, broken == 3


def breakage_expr(breakage: Breakage | None) -> pl.Expr | None:
    """The breakage kind (0-3) of each record drawn to break, else null."""
    if breakage is None or breakage.rate <= 0:
        return None
    key = pl.lit(f"{breakage.key}\x1f") + pl.col("record_id").fill_null("")
    unit = key.hash(seed=breakage.seed + 7).cast(pl.Float64) / 2.0**64
    kind = (key.hash(seed=breakage.seed + 8) % len(BREAKAGES)).cast(pl.Int64)
    return pl.when(unit < breakage.rate).then(kind)


def schema_column(df: pl.DataFrame, tool_schema_path: str | None) -> pl.Series:
    """The JSON Schema text each record asks for: its forced tool's (`tool_schema_path`, with `{name}`
    for the tool name), else a `JSON Schema: ` line of its prompt, else null."""
    from_prompt = df.select(pl.col("prompt").str.extract(SCHEMA_LINE_RE, 1)).to_series()
    if tool_schema_path is None or "tool" not in df.columns or df["tool"].null_count() == df.height:
        return from_prompt.alias("schema")
    out = from_prompt
    for name in df["tool"].drop_nulls().unique().to_list():
        rows = (df["tool"] == name).fill_null(False)
        found = df["line"].str.json_path_match(tool_schema_path.format(name=name))
        out = pl.select(pl.when(pl.lit(rows)).then(found).otherwise(out)).to_series()
    return out.alias("schema")


def with_answers(df: pl.DataFrame, breakage: Breakage | None) -> pl.DataFrame:
    """Adds `answer` (JSON text, or plain text for that breakage) and `plain` to records with a schema."""
    df = df.with_columns(answer=pl.lit(None, pl.String), plain=pl.lit(False))
    if df["schema"].null_count() == df.height:
        return df
    broken = breakage_expr(breakage)
    for text in df["schema"].drop_nulls().unique().to_list():
        try:
            schema = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(schema, dict):
            continue
        answer, plain = answers(schema, broken)
        hit = pl.col("schema") == text
        df = df.with_columns(
            answer=pl.when(hit).then(answer).otherwise(pl.col("answer")),
            plain=pl.when(hit).then(plain).otherwise(pl.col("plain")),
        )
    return df


def claude_content() -> pl.Expr:
    """Claude's content list as JSON: the tool call, or a text block for a plain-text breakage."""
    call = pl.concat_str(
        [
            pl.lit('[{"type":"tool_use","id":"toolu_bdrk_'),
            pl.col("record_id").fill_null("").hash(seed=13).cast(pl.String).str.zfill(20),
            pl.lit('","name":"'),
            pl.col("tool"),
            pl.lit('","input":'),
            pl.col("answer"),
            pl.lit("}]"),
        ]
    )
    text = orjson.dumps([{"type": "text", "text": PLAIN_TEXT}]).decode()
    return pl.when(pl.col("plain")).then(pl.lit(text)).otherwise(call)


def converse_content() -> pl.Expr:
    """Nova / Converse content list as JSON: the `toolUse` block, or a text block."""
    call = pl.concat_str(
        [
            pl.lit('[{"toolUse":{"toolUseId":"tooluse_'),
            pl.col("record_id").fill_null("").hash(seed=17).cast(pl.String).str.zfill(20),
            pl.lit('","name":"'),
            pl.col("tool"),
            pl.lit('","input":'),
            pl.col("answer"),
            pl.lit("}}]"),
        ]
    )
    text = orjson.dumps([{"text": PLAIN_TEXT}]).decode()
    return pl.when(pl.col("plain")).then(pl.lit(text)).otherwise(call)


def splice(encoded: pl.Expr, content: pl.Expr) -> pl.Expr:
    """Put a content list's JSON where the placeholder string was encoded."""
    marker = orjson.dumps(PLACEHOLDER).decode()
    return encoded.str.replace(marker, content, literal=True, n=1)
