"""Structured outputs: a template's `output_schema` (a JSON Schema subset), its Polars type, what each model
family is sent to force that shape, and the vectorised decoding + validation of the answers.

Why a subset: every accepted schema maps one to one onto a Polars dtype (string -> String or Enum,
integer -> Int64, number -> Float64, boolean -> Boolean, array -> List, object -> Struct), so the `output`
column is typed and queryable, and every answer is checked by the same few columnar passes whatever its
size. Anything outside the subset is refused when the template loads, naming the path.

Decoding never loops over rows in Python. The answers are read as NDJSON by Polars (with `ignore_errors`,
so a value of the wrong JSON type becomes null instead of failing the file) in a few whole-column passes:

- the *typed view* (strings read as Binary, which only a JSON string fills; numbers as Float64, integers as
  Int64, booleans as Boolean, arrays as List, objects as Struct): a non-null value is present and of the
  right type. A row whose required fields are all non-null and whose enums hold known values is valid;
  this is the only pass over valid rows, but for schemas with booleans: Polars' nested Boolean view takes
  a number too, so a *probe view* reads booleans as Float64 and a number found there is a wrong type;
- the *presence view* (each field of an object read as String, which any non-null JSON value fills), only
  for the suspect rows: present but null in the typed view = wrong type; absent = missing. Nested objects
  and arrays of objects recurse on each value's exact JSON (a JSONPath per field, and per element index for
  arrays, never per row), so each step is one Polars pass over the suspects, whatever their number.
"""

from __future__ import annotations

import copy
import functools
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

SCALAR_TYPES = {"string": pl.String, "integer": pl.Int64, "number": pl.Float64, "boolean": pl.Boolean}
# Views: what a scalar is read as so that only a JSON value of its type fills it.
_VIEW_TYPES = {"string": pl.Binary, "integer": pl.Int64, "number": pl.Float64, "boolean": pl.Boolean}
ANNOTATIONS = frozenset({"description", "title"})
DEFAULT_TOOL_NAME = "structured_output"
DEFAULT_TOOL_DESCRIPTION = "Record the answer in the required structure."
INSTRUCTION = (
    "Reply with one JSON object only, with no text before or after it and no code fence, that follows the "
    "JSON Schema below."
)
# The emulator finds the schema of a prompt-only request by this line prefix (emulator/README.md).
SCHEMA_LINE = "JSON Schema: "
SNIPPET_CHARS = 60
# Bedrock's tool use takes property names of this shape; they are also safe inside a JSONPath `['...']`.
PROPERTY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SchemaError(ValueError):
    """An `output_schema` outside the supported subset; the text names the path and what to change."""


# ------------------------------------------------------------------------------------------------ nodes
@dataclass(frozen=True)
class Scalar:
    kind: str  # string | integer | number | boolean


@dataclass(frozen=True)
class EnumNode:
    values: tuple[str, ...]


@dataclass(frozen=True)
class ArrayNode:
    items: Node


@dataclass(frozen=True)
class Field:
    name: str
    node: Node
    required: bool


@dataclass(frozen=True)
class ObjectNode:
    fields: tuple[Field, ...]


Node = Scalar | EnumNode | ArrayNode | ObjectNode


def _kind(node: Node) -> str:
    if isinstance(node, Scalar):
        return node.kind
    if isinstance(node, EnumNode):
        return "string"
    return "array" if isinstance(node, ArrayNode) else "object"


def _refuse(where: str, why: str) -> SchemaError:
    return SchemaError(f"{where}: {why}")


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed - ANNOTATIONS)
    if extra:
        raise _refuse(
            where,
            f"unsupported keyword(s) {extra}; supported here: {sorted(allowed | ANNOTATIONS)} "
            "(output_schema takes a JSON Schema subset: object, string, number, integer, boolean, string enum, "
            "array of those)",
        )


def _parse(raw: Any, where: str, *, in_array: bool = False) -> Node:
    if not isinstance(raw, Mapping):
        raise _refuse(where, f"expected a JSON Schema object, got {type(raw).__name__}")
    kind = raw.get("type")
    if "enum" in raw:
        _check_keys(raw, {"type", "enum"}, where)
        values = raw["enum"]
        if kind not in (None, "string"):
            raise _refuse(where, f"an enum must be of type string, not {kind!r}")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise _refuse(where, "enum must be a non-empty list of non-empty strings")
        if len(set(values)) != len(values):
            raise _refuse(where, f"enum lists a value twice: {values}")
        return EnumNode(tuple(values))
    if isinstance(kind, list):
        raise _refuse(where, f"type must be one type name, not a list {kind} (nullable types are not supported)")
    if kind in SCALAR_TYPES:
        _check_keys(raw, {"type"}, where)
        return Scalar(kind)
    if kind == "array":
        _check_keys(raw, {"type", "items"}, where)
        if in_array:
            raise _refuse(where, "arrays of arrays are not supported")
        if "items" not in raw:
            raise _refuse(where, "an array needs `items`")
        return ArrayNode(_parse(raw["items"], f"{where}.items", in_array=True))
    if kind == "object":
        return _parse_object(raw, where)
    raise _refuse(
        where, f"type {kind!r} is not supported; use one of string, number, integer, boolean, array, object"
    )


def _parse_object(raw: Mapping[str, Any], where: str) -> ObjectNode:
    _check_keys(raw, {"type", "properties", "required", "additionalProperties"}, where)
    props = raw.get("properties")
    if not isinstance(props, Mapping) or not props:
        raise _refuse(where, "an object needs non-empty `properties`")
    required = raw.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _refuse(f"{where}.required", "must be a list of property names")
    unknown = [r for r in required if r not in props]
    if unknown:
        raise _refuse(f"{where}.required", f"names no property {unknown}; properties: {list(props)}")
    if raw.get("additionalProperties", True) not in (True, False):
        raise _refuse(f"{where}.additionalProperties", "only true or false is supported")
    fields = []
    for name, sub in props.items():
        if not isinstance(name, str) or not PROPERTY_NAME.fullmatch(name):
            raise _refuse(
                f"{where}.properties",
                f"property name {name!r} must match {PROPERTY_NAME.pattern} (what tool use accepts)",
            )
        fields.append(Field(name, _parse(sub, f"{where}.properties.{name}"), name in required))
    return ObjectNode(tuple(fields))


# ---------------------------------------------------------------------------------------------- dtypes
def _dtype(node: Node, *, view: bool = False, enums: bool = True) -> pl.DataType:
    """The output dtype; `view`: the typed view's (strings as Binary); `enums=False`: enums as String
    (the step between the two: Binary casts to String, String to Enum)."""
    if isinstance(node, Scalar):
        return (_VIEW_TYPES if view else SCALAR_TYPES)[node.kind]()
    if isinstance(node, EnumNode):
        return pl.Binary() if view else pl.Enum(list(node.values)) if enums else pl.String()
    if isinstance(node, ArrayNode):
        return pl.List(_dtype(node.items, view=view, enums=enums))
    return pl.Struct({f.name: _dtype(f.node, view=view, enums=enums) for f in node.fields})


def _read(texts: pl.Series, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """One JSON object text per row (single line each) read under `schema`; a value of another JSON type
    than its field's reads as null."""
    if texts.is_empty():
        return pl.DataFrame(schema=dict(schema))
    blob = texts.str.join("\n").item().encode()
    return pl.read_ndjson(io.BytesIO(blob), schema=dict(schema), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checks
def _ok(expr: pl.Expr, node: Node) -> pl.Expr:
    """True where a typed-view value that is non-null is also valid below (enums known, required fields
    of nested objects non-null); nulls are judged by the caller."""
    if isinstance(node, EnumNode):
        return expr.cast(pl.String).is_in(list(node.values)).fill_null(True)
    if isinstance(node, ArrayNode):
        inner = pl.element().is_not_null()
        if not isinstance(node.items, Scalar):
            inner = inner & _ok(pl.element(), node.items)
        return expr.list.eval(inner).list.all().fill_null(True)
    if isinstance(node, ObjectNode):
        conds = []
        for f in node.fields:
            value = expr.struct.field(f.name)
            # An optional field that is null may be absent (fine) or of the wrong type: a suspect either way.
            conds.append(value.is_not_null() & _ok(value, f.node))
        return pl.all_horizontal(conds).fill_null(True)
    return pl.lit(True)


def _has_bool(node: Node) -> bool:
    if isinstance(node, Scalar):
        return node.kind == "boolean"
    if isinstance(node, ArrayNode):
        return _has_bool(node.items)
    return isinstance(node, ObjectNode) and any(_has_bool(f.node) for f in node.fields)


def _probe_dtype(node: Node) -> pl.DataType:
    """Booleans read as Float64, and only the paths to them: Polars' Boolean view takes a number for
    `true`/`false` inside nested values, so a number found here is a boolean of the wrong type."""
    if isinstance(node, Scalar):
        return pl.Float64()
    if isinstance(node, ArrayNode):
        return pl.List(_probe_dtype(node.items))
    assert isinstance(node, ObjectNode)
    return pl.Struct({f.name: _probe_dtype(f.node) for f in node.fields if _has_bool(f.node)})


def _number_at_bool(expr: pl.Expr, node: Node) -> pl.Expr:
    """True where the probe view (`_probe_dtype`) holds a number at some boolean position."""
    if isinstance(node, Scalar):
        return expr.is_not_null()
    if isinstance(node, ArrayNode):
        return expr.list.eval(_number_at_bool(pl.element(), node.items)).list.any().fill_null(False)
    assert isinstance(node, ObjectNode)
    found = [_number_at_bool(expr.struct.field(f.name), f.node) for f in node.fields if _has_bool(f.node)]
    return pl.any_horizontal(found).fill_null(False) if found else pl.lit(False)


def _snippet(expr: pl.Expr) -> pl.Expr:
    cut = expr.str.slice(0, SNIPPET_CHARS)
    return pl.when(expr.str.len_chars() > SNIPPET_CHARS).then(cut + pl.lit("…")).otherwise(cut)


def _quoted(expr: pl.Expr) -> pl.Expr:
    return pl.lit("'") + _snippet(expr) + pl.lit("'")


def _explain_object(texts: pl.Series, node: ObjectNode, prefix: pl.Series) -> pl.Series:
    """The first problem of each object text (null: none), naming the field by its path.

    `texts` hold JSON objects as single-line text; `prefix` is each row's path so far ("" or "a.b[2].").
    """
    typed = _read(texts, {f.name: _dtype(f.node, view=True) for f in node.fields})
    present = _read(texts, {f.name: pl.String() for f in node.fields})
    probed = [f for f in node.fields if _has_bool(f.node)]
    probe = _read(texts, {f.name: _probe_dtype(f.node) for f in probed}) if probed else None
    frame = pl.DataFrame({"prefix": prefix}).with_row_index("row")
    messages: list[pl.Series] = []
    for f in node.fields:
        path = pl.col("prefix") + pl.lit(f.name)
        cols = frame.with_columns(value=typed[f.name], raw=present[f.name], numbers=pl.lit(False))
        if probe is not None and f in probed:
            cols = cols.with_columns(probe[f.name].alias("probe")).with_columns(
                numbers=_number_at_bool(pl.col("probe"), f.node)
            )
        if isinstance(f.node, Scalar) and f.node.kind == "boolean":
            cols = cols.with_columns(value=pl.when(~pl.col("numbers")).then(pl.col("value")))
        value, raw = pl.col("value"), pl.col("raw")
        here = (
            pl.when(raw.is_null() & pl.lit(f.required))
            .then(path + pl.lit(": required field missing"))
            .when(raw.is_not_null() & value.is_null())
            .then(path + pl.lit(f": expected {_kind(f.node)}, got ") + _quoted(raw))
        )
        if isinstance(f.node, EnumNode):
            here = here.when(value.is_not_null() & ~_ok(value, f.node)).then(
                path + pl.lit(": ") + _quoted(value.cast(pl.String)) + pl.lit(f" is not one of {list(f.node.values)}")
            )
        msg = cols.select(here.alias("m"))["m"]
        wrong_below = ~_ok(value, f.node) | pl.col("numbers")
        deeper_rows = cols.select(value.is_not_null() & wrong_below & msg.is_null()).to_series()
        if isinstance(f.node, (ObjectNode, ArrayNode)) and deeper_rows.any():
            idx = deeper_rows.arg_true()
            sub_prefix = cols[idx].select(path.alias("p"))["p"]
            # The exact JSON of the value (serde's): Polars' String view of an object does not escape
            # backslashes or control characters, so it is only used for presence and snippets.
            sub_texts = texts.gather(idx).str.json_path_match(f"$['{f.name}']")
            if isinstance(f.node, ObjectNode):
                sub = _explain_object(sub_texts, f.node, sub_prefix + ".")
            else:
                sub = _explain_array(sub_texts, f.node, sub_prefix)
            msg = msg.scatter(idx, sub)
        messages.append(msg)
    if not messages:
        return pl.Series([None] * len(texts), dtype=pl.String)
    return pl.DataFrame(messages, schema=[str(i) for i in range(len(messages))]).select(
        pl.coalesce(pl.all())
    ).to_series()


def _explain_array(texts: pl.Series, node: ArrayNode, prefix: pl.Series) -> pl.Series:
    """The first bad element of each array text, as `prefix[i]: ...`."""
    wrapped = pl.select(pl.concat_str([pl.lit('{"a":'), pl.lit(texts), pl.lit("}")])).to_series()
    typed = _read(wrapped, {"a": pl.List(_dtype(node.items, view=True))})["a"]
    raw = _read(wrapped, {"a": pl.List(pl.String())})["a"]
    columns = {"prefix": prefix, "value": typed, "raw": raw}
    if _has_bool(node.items):
        columns["probe"] = _read(wrapped, {"a": pl.List(_probe_dtype(node.items))})["a"]
    items = (
        pl.DataFrame(columns)
        .with_row_index("row")
        .explode([c for c in columns if c != "prefix"])
        .with_columns(i=pl.int_range(pl.len()).over("row"))
        .with_columns(path=pl.col("prefix") + pl.lit("[") + pl.col("i").cast(pl.String) + pl.lit("]"))
    )
    numbers = _number_at_bool(pl.col("probe"), node.items) if "probe" in columns else pl.lit(False)
    items = items.with_columns(numbers=numbers)
    if isinstance(node.items, Scalar) and node.items.kind == "boolean":
        items = items.with_columns(value=pl.when(~pl.col("numbers")).then(pl.col("value")))
    value = pl.col("value")
    here = pl.when(value.is_null()).then(
        pl.col("path") + pl.lit(f": expected {_kind(node.items)}, got ") + _quoted(pl.col("raw").fill_null("null"))
    )
    if isinstance(node.items, EnumNode):
        here = here.when(~_ok(value, node.items)).then(
            pl.col("path")
            + pl.lit(": ")
            + _quoted(value.cast(pl.String))
            + pl.lit(f" is not one of {list(node.items.values)}")
        )
    items = items.with_columns(m=here)
    if isinstance(node.items, ObjectNode):
        deeper = items.select(value.is_not_null() & (~_ok(value, node.items) | pl.col("numbers"))).to_series()
        if deeper.any():
            idx = deeper.arg_true()
            picked = items[idx].select("row", "i", "path").with_columns(text=pl.lit(None, pl.String))
            # The element's exact JSON, one JSONPath per element index (indices, not rows, are looped).
            for i in picked["i"].unique().to_list():
                at = (picked["i"] == i).arg_true()
                found = wrapped.gather(picked["row"].gather(at)).str.json_path_match(f"$['a'][{i}]")
                picked = picked.with_columns(picked["text"].scatter(at, found))
            sub = _explain_object(picked["text"], node.items, picked["path"] + ".")
            items = items.with_columns(items["m"].scatter(idx, sub))
    first = items.group_by("row", maintain_order=True).agg(pl.col("m").drop_nulls().first())
    return (
        pl.DataFrame({"row": pl.Series(range(len(texts)), dtype=pl.UInt32)})
        .join(first, on="row", how="left")
        .sort("row")["m"]
    )


# ---------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class OutputSchema:
    """A parsed `output_schema`: the JSON Schema as given (validated) and its tree."""

    schema: dict[str, Any]
    root: ObjectNode

    @classmethod
    def parse(cls, raw: Any, where: str = "output_schema") -> OutputSchema:
        """Validate a template's `output_schema` (a dict, or JSON text); `SchemaError` names the bad path."""
        if isinstance(raw, (str, bytes)):
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _refuse(where, f"not valid JSON: {exc}") from None
        if not isinstance(raw, Mapping) or raw.get("type") != "object":
            raise _refuse(where, 'the top level must be {"type": "object", "properties": {...}}')
        root = _parse_object(raw, where)
        return cls(copy.deepcopy(dict(raw)), root)

    @functools.cached_property
    def dtype(self) -> pl.Struct:
        """The type of the `output` column."""
        return _dtype(self.root)  # type: ignore[return-value]

    @functools.cached_property
    def _views(self) -> tuple[pl.Schema, pl.DataType, pl.Schema | None]:
        """(typed view, enums-as-String output type, boolean probe view or None), built once."""
        view = _dtype(self.root, view=True).to_schema()  # type: ignore[attr-defined]
        probe = _probe_dtype(self.root).to_schema() if _has_bool(self.root) else None  # type: ignore[attr-defined]
        return view, _dtype(self.root, enums=False), probe

    @property
    def enums(self) -> dict[str, tuple[str, ...]]:
        """Enum fields by dotted path (`[]` for array items): for docs and tests."""
        out: dict[str, tuple[str, ...]] = {}

        def walk(node: Node, path: str) -> None:
            if isinstance(node, EnumNode):
                out[path] = node.values
            elif isinstance(node, ArrayNode):
                walk(node.items, path + "[]")
            elif isinstance(node, ObjectNode):
                for f in node.fields:
                    walk(f.node, f"{path}.{f.name}" if path else f.name)

        walk(self.root, "")
        return out

    def tool_schema(self) -> dict[str, Any]:
        """The JSON Schema a tool definition carries (Claude `input_schema`, Converse `inputSchema.json`)."""
        return copy.deepcopy(self.schema)

    def schema_json(self) -> str:
        """The schema as compact JSON on one line (the instruction's last line)."""
        return orjson.dumps(self.schema).decode()

    def instructions(self) -> str:
        """What families without tool use get appended to the prompt: the rule and the schema, its last line
        `JSON Schema: {...}`."""
        return f"{INSTRUCTION}\n{SCHEMA_LINE}{self.schema_json()}"

    def tool_json(self, name: str = DEFAULT_TOOL_NAME, description: str = DEFAULT_TOOL_DESCRIPTION) -> str:
        """A Claude tool definition as JSON (what the schema adds to each request, for token estimates)."""
        return orjson.dumps({"name": name, "description": description, "input_schema": self.schema}).decode()

    def added_bytes(self, tools: bool) -> int:
        """UTF-8 bytes the schema adds to each request: the tool definition, or the instruction text."""
        return len(self.tool_json().encode()) if tools else len(self.instructions().encode()) + 2

    def decode(self, answers: pl.Series) -> pl.DataFrame:
        """Decode and validate a String column of answers (JSON object texts; null = no answer).

        Returns `output` (this schema's Struct, null where invalid) and `error` (null, or a message naming
        the first bad field: missing, wrong type, outside the enum, or not a JSON object), row for row.
        A surrounding markdown code fence and blanks are tolerated; anything else around the object is not.
        """
        n = len(answers)
        text = _unfenced(answers)
        shaped = text.str.starts_with("{") & text.str.ends_with("}")
        # One line each for the NDJSON reader: a raw newline can only be blank space between tokens of
        # valid JSON (inside a string it must be escaped), so texts with one are re-encoded, as are all if
        # the fast read fails (some text is not JSON).
        multiline = shaped & text.str.contains(r"[\r\n]", literal=False)
        candidates = text
        if multiline.any():
            canonical = pl.select(pl.when(multiline).then(text.str.json_path_match("$"))).to_series()
            shaped = shaped & ~(multiline & canonical.is_null())
            candidates = pl.select(pl.when(multiline).then(canonical).otherwise(text)).to_series()
        candidates = pl.select(pl.when(shaped).then(candidates).otherwise(pl.lit("{}"))).to_series()
        view, as_text, probe_view = self._views
        try:
            typed = _read(candidates, view)
            if typed.height != n:
                raise ValueError("row count")
        except (pl.exceptions.PolarsError, ValueError):
            canonical = pl.select(pl.when(shaped).then(text.str.json_path_match("$"))).to_series()
            shaped = shaped & canonical.is_not_null() & canonical.str.starts_with("{")
            candidates = pl.select(pl.when(shaped).then(canonical).otherwise(pl.lit("{}"))).to_series()
            typed = _read(candidates, view)
        value = typed.select(pl.struct(pl.all()).alias("v"))["v"]
        ok = pl.select(_ok(pl.lit(value), self.root) & pl.lit(shaped)).to_series()
        if probe_view is not None:
            probe = _read(candidates, probe_view)
            numbers = probe.select(_number_at_bool(pl.struct(pl.all()), self.root)).to_series()
            ok = ok & ~numbers
        errors = pl.Series("error", [None] * n, dtype=pl.String)
        not_json = ~shaped & answers.is_not_null()
        if not_json.any():
            errors = pl.select(
                pl.when(not_json)
                .then(pl.lit("not a JSON object: ") + _quoted(answers.cast(pl.String)))
                .otherwise(errors)
            ).to_series()
        suspects = (~ok & shaped).arg_true()
        if len(suspects):
            found = _explain_object(
                candidates.gather(suspects), self.root, pl.Series([""] * len(suspects), dtype=pl.String)
            )
            # A suspect with no problem found had only optional fields absent: valid.
            errors = errors.scatter(suspects, found)
        errors = pl.select(
            pl.when(answers.is_null()).then(pl.lit("no answer")).otherwise(errors)
        ).to_series().alias("error")
        output = pl.select(
            pl.when(errors.is_null())
            .then(value)
            .cast(as_text)
            .cast(self.dtype, strict=False)
            .alias("output")
        )["output"]
        return pl.DataFrame([output, errors])


def _unfenced(answers: pl.Series) -> pl.Series:
    """Answers without surrounding blanks or a markdown code fence (what some models wrap JSON in)."""
    text = answers.cast(pl.String).str.strip_chars()
    fenced = text.str.starts_with("```")
    if fenced.any():
        text = pl.select(
            pl.when(fenced)
            .then(text.str.replace(r"^```[A-Za-z]*\s*", "").str.replace(r"\s*```$", ""))
            .otherwise(text)
        ).to_series()
    return text


def _enums_as_text(dtype: pl.DataType) -> pl.DataType:
    if isinstance(dtype, pl.Enum):
        return pl.String()
    if isinstance(dtype, pl.List):
        return pl.List(_enums_as_text(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pl.Struct({f.name: _enums_as_text(f.dtype) for f in dtype.fields})
    return dtype


def decode_as(answers: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Answers already validated (by `OutputSchema.decode`) read into an output dtype, when only the dtype
    is at hand (results re-joined without their `output`); an undecodable text gives null."""
    text = _unfenced(answers)
    try:
        return text.str.json_decode(dtype)
    except pl.exceptions.PolarsError:
        canonical = text.str.json_path_match("$")
        ok = canonical.str.starts_with("{").fill_null(False)
        lines = pl.select(pl.when(ok).then(canonical).otherwise(pl.lit("{}"))).to_series()
        read = _read(lines, _enums_as_text(dtype).to_schema())  # type: ignore[attr-defined]
        value = read.select(pl.when(pl.lit(ok)).then(pl.struct(pl.all())).alias("v"))["v"]
        return value.cast(dtype, strict=False)


def parse_schema(raw: Any, where: str = "output_schema") -> OutputSchema:
    return OutputSchema.parse(raw, where)


def example_value(node: Node) -> Any:
    """A small valid value of a node (docs and tests)."""
    if isinstance(node, Scalar):
        return {"string": "text", "integer": 1, "number": 0.5, "boolean": True}[node.kind]
    if isinstance(node, EnumNode):
        return node.values[0]
    if isinstance(node, ArrayNode):
        return [example_value(node.items)]
    return {f.name: example_value(f.node) for f in node.fields}


__all__: Sequence[str] = (
    "DEFAULT_TOOL_NAME",
    "INSTRUCTION",
    "SCHEMA_LINE",
    "OutputSchema",
    "SchemaError",
    "decode_as",
    "example_value",
    "parse_schema",
)
