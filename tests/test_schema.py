"""tasks/core/schema.py: the output_schema subset, its dtype, and columnar decoding + validation.

The property tests draw a schema, then valid objects of it (all must round-trip into the typed `output`),
and single breakages of one field (each must be caught, naming that field's path).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.core.schema import SCHEMA_LINE, OutputSchema, SchemaError

SENTIMENT = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "description": "0 to 1"},
    },
    "required": ["label", "confidence"],
}
ENTITIES = {
    "type": "object",
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "kind": {"enum": ["person", "org", "place"]}},
                "required": ["name", "kind"],
            },
        },
        "meta": {
            "type": "object",
            "properties": {"count": {"type": "integer"}, "sure": {"type": "boolean"}},
            "required": ["count"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["entities"],
}


# ------------------------------------------------------------------------------------------ parsing
def test_dtype_follows_the_schema() -> None:
    schema = OutputSchema.parse(ENTITIES)
    assert schema.dtype == pl.Struct(
        {
            "entities": pl.List(pl.Struct({"name": pl.String, "kind": pl.Enum(["person", "org", "place"])})),
            "meta": pl.Struct({"count": pl.Int64, "sure": pl.Boolean}),
            "tags": pl.List(pl.String),
        }
    )
    assert OutputSchema.parse(SENTIMENT).dtype == pl.Struct(
        {"label": pl.Enum(["positive", "negative", "neutral"]), "confidence": pl.Float64}
    )
    assert schema.enums == {"entities[].kind": ("person", "org", "place")}


@pytest.mark.parametrize(
    ("raw", "where", "why"),
    [
        ({"type": "array", "items": {"type": "string"}}, "output_schema", "top level must be"),
        (
            {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
            "output_schema.properties.age",
            "unsupported keyword(s) ['minimum']",
        ),
        (
            {"type": "object", "properties": {"x": {"type": ["string", "null"]}}},
            "output_schema.properties.x",
            "nullable types are not supported",
        ),
        (
            {"type": "object", "properties": {"m": {"type": "array", "items": {"type": "array", "items": {}}}}},
            "output_schema.properties.m.items",
            "arrays of arrays",
        ),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required", "['b']"),
        ({"type": "object", "properties": {"a": {"type": "integer", "enum": ["1"]}}}, "properties.a", "string"),
        ({"type": "object", "properties": {"a": {"enum": []}}}, "properties.a", "non-empty list"),
        ({"type": "object", "properties": {"a": {"type": "null"}}}, "properties.a", "'null' is not supported"),
        ({"type": "object", "properties": {"o": {"type": "object"}}}, "properties.o", "non-empty `properties`"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "properties.a", "needs `items`"),
    ],
)
def test_outside_the_subset_is_refused_naming_the_path(raw: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(SchemaError) as info:
        OutputSchema.parse(raw)
    assert where in str(info.value)
    assert why in str(info.value)


def test_json_text_is_accepted_and_tool_schema_and_instructions_carry_it() -> None:
    schema = OutputSchema.parse(orjson.dumps(SENTIMENT).decode())
    assert schema.tool_schema() == SENTIMENT
    assert schema.tool_schema() is not schema.schema  # callers may not change the parsed schema
    last = schema.instructions().splitlines()[-1]
    assert last.startswith(SCHEMA_LINE)
    assert orjson.loads(last.removeprefix(SCHEMA_LINE)) == SENTIMENT
    assert schema.added_bytes(tools=True) > len(orjson.dumps(SENTIMENT))
    assert schema.added_bytes(tools=False) > len(schema.instructions())


# ----------------------------------------------------------------------------------------- examples
def test_decode_examples() -> None:
    schema = OutputSchema.parse(ENTITIES)
    answers = [
        '{"entities":[{"name":"Ada","kind":"person"}],"meta":{"count":1,"sure":true},"tags":["x"]}',
        '{"entities":[]}',
        '```json\n{"entities": [\n  {"name": "Acme", "kind": "org"}\n]}\n```',
        '{"entities":[{"name":"Ada","kind":"person"},{"name":"Mars","kind":"planet"}]}',
        '{"entities":[{"name":"Ada","kind":"person"},{"kind":"org"}]}',
        '{"entities":[{"name":"Ada","kind":"person"},"Bob"]}',
        '{"entities":[],"meta":{"sure":true}}',
        '{"entities":[],"meta":{"count":"3"}}',
        '{"entities":[],"tags":["a",2]}',
        '{"entities":"Ada"}',
        '{"meta":{"count":1}}',
        "Ada is a person.",
        '{"entities":[]} and more',
        None,
    ]
    out = schema.decode(pl.Series(answers, dtype=pl.String))
    assert out.columns == ["output", "error"]
    assert out["output"].dtype == schema.dtype
    errors = out["error"].to_list()
    assert errors[:3] == [None, None, None]
    assert out["output"][0] == {
        "entities": [{"name": "Ada", "kind": "person"}],
        "meta": {"count": 1, "sure": True},
        "tags": ["x"],
    }
    assert out["output"][2]["entities"] == [{"name": "Acme", "kind": "org"}]
    assert errors[3] == "entities[1].kind: 'planet' is not one of ['person', 'org', 'place']"
    assert errors[4] == "entities[1].name: required field missing"
    assert errors[5] == "entities[1]: expected object, got 'Bob'"
    assert errors[6] == "meta.count: required field missing"
    assert errors[7] == "meta.count: expected integer, got '3'"
    assert errors[8] == "tags[1]: expected string, got '2'"
    assert errors[9] == "entities: expected array, got 'Ada'"
    assert errors[10] == "entities: required field missing"
    assert errors[11] == "not a JSON object: 'Ada is a person.'"
    assert errors[12].startswith("not a JSON object")
    assert errors[13] == "no answer"
    assert out["output"][3:].null_count() == len(answers) - 3


def test_enum_output_is_queryable() -> None:
    schema = OutputSchema.parse(SENTIMENT)
    out = schema.decode(
        pl.Series(['{"label":"positive","confidence":0.9}', '{"label":"neutral","confidence":0.5}'] * 3)
    )
    counts = out.select(pl.col("output").struct.field("label").value_counts(sort=True)).unnest("label")
    assert counts["label"].dtype == pl.Enum(["positive", "negative", "neutral"])
    assert sorted(counts["count"].to_list()) == [3, 3]


# ------------------------------------------------------------------------------------------- properties
NAMES = st.text(alphabet="abcdefgxyz_.-", min_size=1, max_size=6)
ENUM_VALUES = st.lists(st.text(alphabet="abcdefghij-", min_size=1, max_size=5), min_size=1, max_size=4, unique=True)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean")]),
        ENUM_VALUES.map(lambda values: {"type": "string", "enum": values}),
    )


def _object(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
        props = {name: draw(children) for name in names}
        required = [n for n in names if draw(st.booleans())]
        return {"type": "object", "properties": props, "required": required}

    return build()


def _node(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    if depth == 0:
        return _leaf()
    inner = _node(depth - 1)
    return st.one_of(
        _leaf(),
        _object(inner),
        st.one_of(_leaf(), _object(_node(depth - 1))).map(lambda items: {"type": "array", "items": items}),
    )


SCHEMAS = _object(_node(2))


def _value(raw: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "enum" in raw:
        return st.sampled_from(raw["enum"])
    kind = raw["type"]
    if kind == "string":
        return st.text(max_size=12)
    if kind == "integer":
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(_value(raw["items"]), max_size=3)
    req = {k: _value(v) for k, v in raw["properties"].items() if k in raw["required"]}
    opt = {k: _value(v) for k, v in raw["properties"].items() if k not in raw["required"]}
    return st.fixed_dictionaries(req, optional=opt)


def _expected(raw: dict[str, Any], value: Any) -> Any:
    """What `output` holds for a valid value: every field present (absent ones null), numbers as floats."""
    if value is None:
        return None
    if raw.get("type") == "number":
        return float(value)
    if raw.get("type") == "array":
        return [_expected(raw["items"], v) for v in value]
    if raw.get("type") == "object":
        return {k: _expected(sub, value.get(k)) for k, sub in raw["properties"].items()}
    return value


@st.composite
def schema_and_values(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    raw = draw(SCHEMAS)
    return raw, draw(st.lists(_value(raw), min_size=1, max_size=8))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_and_values())
def test_any_valid_object_round_trips(case: tuple[dict[str, Any], list[Any]]) -> None:
    raw, values = case
    schema = OutputSchema.parse(raw)
    texts = [orjson.dumps(v).decode() for v in values]
    out = schema.decode(pl.Series(texts, dtype=pl.String))
    assert out["error"].to_list() == [None] * len(values)
    assert out["output"].to_list() == [_expected(raw, v) for v in values]


_WRONG = {
    "string": [42, True, ["x"], {"k": 1}],
    "integer": ["7", 1.5, False, [1]],
    "number": ["0.5", True, {"v": 1}],
    "boolean": ["true", 1, [True]],
    "array": ["x", 3, {"k": 1}],
    "object": ["x", 3, [1, 2]],
}


def _sites(raw: dict[str, Any], value: Any, path: str) -> list[tuple[str, Any, Any, dict[str, Any]]]:
    """(path, container, key, node schema) of every value inside `value` that a breakage may target."""
    out: list[tuple[str, Any, Any, dict[str, Any]]] = []
    if raw.get("type") == "object":
        for name, sub in raw["properties"].items():
            where = f"{path}.{name}" if path else name
            if name in value:
                out.append((where, value, name, {**sub, "_required": name in raw["required"]}))
                out.extend(_sites(sub, value[name], where))
            elif name in raw["required"]:
                raise AssertionError("a valid value lacks a required field")
    elif raw.get("type") == "array":
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            out.append((where, value, i, {**raw["items"], "_required": True, "_item": True}))
            out.extend(_sites(raw["items"], item, where))
    return out


@st.composite
def broken_case(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, str]:
    raw = draw(SCHEMAS)
    value = copy.deepcopy(draw(_value(raw)))
    sites = _sites(raw, value, "")
    kinds = ["not_json"]
    if sites:
        kinds += ["wrong_type", "missing", "enum"]
    kind = draw(st.sampled_from(kinds))
    if kind == "not_json":
        text = draw(st.sampled_from(["Sure! The answer is positive.", "", "{not json}", '["a"]', '"text"']))
        return raw, text, "", "not a JSON object"
    if kind == "missing":
        candidates = [s for s in sites if s[3]["_required"] and not s[3].get("_item")]
        if not candidates:
            kind = "wrong_type"
    if kind == "enum":
        candidates = [s for s in sites if "enum" in s[3]]
        if not candidates:
            kind = "wrong_type"
    if kind == "wrong_type":
        candidates = sites
    path, container, key, node = draw(st.sampled_from(candidates))
    if kind == "missing":
        del container[key]
        return raw, orjson.dumps(value).decode(), path, "required field missing"
    if kind == "enum":
        container[key] = container[key] + "-not"
        return raw, orjson.dumps(value).decode(), path, "is not one of"
    node_type = node.get("type", "string")
    container[key] = draw(st.sampled_from(_WRONG[node_type]))
    return raw, orjson.dumps(value).decode(), path, f"expected {node_type}, got"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_case())
def test_any_broken_object_is_caught_naming_the_field(case: tuple[dict[str, Any], str, str, str]) -> None:
    raw, text, path, phrase = case
    schema = OutputSchema.parse(raw)
    # Between valid rows, so that a row's message cannot come from a neighbour.
    valid = orjson.dumps(_example(raw)).decode()
    out = schema.decode(pl.Series([valid, text, valid], dtype=pl.String))
    assert out["error"][0] is None and out["error"][2] is None
    message = out["error"][1]
    assert message is not None, text
    assert out["output"][1] is None
    if path:
        assert message.startswith(f"{path}: "), (message, path, text)
    assert phrase in message, (message, phrase, text)


def _example(raw: dict[str, Any]) -> Any:
    if "enum" in raw:
        return raw["enum"][0]
    kind = raw["type"]
    if kind == "object":
        return {k: _example(v) for k, v in raw["properties"].items()}
    if kind == "array":
        return [_example(raw["items"])]
    return {"string": "s", "integer": 1, "number": 0.5, "boolean": True}[kind]


def test_property_names_tool_use_refuses_are_refused() -> None:
    with pytest.raises(SchemaError, match="property name 'full name' must match"):
        OutputSchema.parse({"type": "object", "properties": {"full name": {"type": "string"}}})
