"""What every model family module builds on: the family spec, inference settings, shared expressions, the registry.

A family module declares one `FamilySpec` named `FAMILY` (see `tasks/core/families/__init__.py`). Its parts:

- `matches(base_id)`: the lower-case `provider.model` ids it serves (`tasks.core.model_ids.parse_model_id`);
  None for a family chosen by the invocation type alone (`converse`). Matches must not overlap.
- `model_input(settings, prompt)`: the `modelInput` struct as a Polars expression over the prompt column;
  optional parameters are left out, never sent as null (`sampling`).
- `output_dtype`: the `modelOutput` struct type to decode (only what is read; unknown keys are ignored).
- `response` and the `input_tokens` / `output_tokens` / `stop_reason` paths into `modelOutput`
  (`"usage.input_tokens"`, `"outputs[0].text"`; None = not reported).
- `on_demand_request(body)` / `on_demand_output(response)`: the bedrock-runtime call for one record and
  the `modelOutput` dict of its response (default: `InvokeModel` with the body as JSON).
- `defaults`: family defaults for `InferenceSettings` fields (below the template's and explicit values).
- structured outputs (a template's `output_schema`, `tasks/core/schema.py`): `force_schema(body, schema)`
  adds the family's native way of forcing the schema to the `modelInput` struct (tool use); families
  without it get the schema as instructions appended to the prompt and their text answer parsed strictly.
  A tool family also declares `structured_dtype` (its `modelOutput` type with the tool call's input read
  as text), `structured_answer` (that text, from the decoded output) and `answer_path` (a JSONPath to the
  tool input from the output line's root, for the exact text when the fast read cannot give it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson
import polars as pl

if TYPE_CHECKING:
    from tasks.core.schema import OutputSchema


@functools.lru_cache(maxsize=64)
def _parsed_schema(text: str) -> OutputSchema:
    from tasks.core.schema import OutputSchema

    return OutputSchema.parse(text)


class UnknownModelError(ValueError):
    """The model id maps to no request format we know."""


@dataclass(frozen=True)
class ModelFamily:
    """A request/response format. `kind` decides whether results carry `response` or `embedding`.

    `output_schema` (compact JSON, from a template's `output_schema`) makes it structured: requests force
    that schema and results gain a typed `output` column. It travels with the family, so every step that
    builds or parses records for the run agrees on it.
    """

    name: str
    kind: str  # "text" | "embedding"
    output_schema: str | None = None

    def structured(self, output_schema: Any) -> ModelFamily:
        """This family asking for `output_schema` (a dict, JSON text, an `OutputSchema` or None)."""
        if output_schema is None:
            return replace(self, output_schema=None)
        if self.kind != "text":
            raise ValueError(f"family {self.name!r} makes embeddings: an output_schema needs a text model")
        from tasks.core.schema import OutputSchema

        parsed = output_schema if isinstance(output_schema, OutputSchema) else OutputSchema.parse(output_schema)
        return replace(self, output_schema=parsed.schema_json())

    @property
    def schema(self) -> OutputSchema | None:
        return _parsed_schema(self.output_schema) if self.output_schema else None

    @property
    def result_column(self) -> str:
        return "embedding" if self.kind == "embedding" else "response"

    @property
    def result_dtype(self) -> pl.DataType:
        return pl.List(pl.Float32) if self.kind == "embedding" else pl.String()


# ---------------------------------------------------------------------------------------------- settings

# Settings a prompt template may suggest; the others come from explicit options or the family.
TEMPLATE_SETTINGS = ("max_tokens", "temperature", "top_p", "system")


def _unset(name: str, value: Any) -> bool:
    """None is unset; so are a max_tokens of 0 and an empty system prompt (neither is a real setting)."""
    return value is None or (name in ("max_tokens", "system") and not value)


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
    def resolve(
        cls, template: Any = None, family: ModelFamily | FamilySpec | str | None = None, **explicit: Any
    ) -> InferenceSettings:
        """The one place settings precedence lives: explicit (set) > template > family default > built-in.

        `explicit` takes the field names (`max_tokens`, `temperature`, `top_p`, `system`, `dimensions`,
        `normalize`); unset values (None, a max_tokens of 0, an empty system) fall through. A template
        (any object with those attributes, e.g. `PromptTemplate`) offers `TEMPLATE_SETTINGS` only.
        """
        names = [f.name for f in fields(cls)]
        unknown = set(explicit) - set(names)
        if unknown:
            raise TypeError(f"unknown inference options: {sorted(unknown)}")
        defaults: Mapping[str, Any] = spec_of(family).defaults if family is not None else {}
        values: dict[str, Any] = {}
        for name in names:
            offered = [explicit.get(name)]
            if name in TEMPLATE_SETTINGS and template is not None:
                offered.append(getattr(template, name, None))
            offered.append(defaults.get(name))
            value = next((v for v in offered if not _unset(name, v)), None)
            if value is not None:
                values[name] = value
        return cls(**values)

    @classmethod
    def from_options(cls, template: Any = None, **given: Any) -> InferenceSettings:
        """Explicit options (non-None) > the template's defaults > the built-in defaults (`resolve`)."""
        return cls.resolve(template, **given)

    def with_template(self, template: Any) -> InferenceSettings:
        """Fill the unset (None) fields from a template; an explicit value always wins (`resolve`)."""
        return type(self).resolve(template, **asdict(self))


# ------------------------------------------------------------------------------------ shared expressions


def lit_int(value: int) -> pl.Expr:
    return pl.lit(int(value), dtype=pl.Int64)


def lit_float(value: float) -> pl.Expr:
    return pl.lit(float(value), dtype=pl.Float64)


def sampling(
    settings: InferenceSettings, *, temperature: str = "temperature", top_p: str = "top_p"
) -> dict[str, pl.Expr]:
    """The optional sampling fields under the family's names; an unset one is left out, never null."""
    out: dict[str, pl.Expr] = {}
    if settings.temperature is not None:
        out[temperature] = lit_float(settings.temperature)
    if settings.top_p is not None:
        out[top_p] = lit_float(settings.top_p)
    return out


def user_messages(prompt: pl.Expr, *, typed: bool) -> pl.Expr:
    """`[{"role": "user", "content": [{"type"?: "text", "text": prompt}]}]` as a list-of-struct column."""
    block = pl.struct(type=pl.lit("text"), text=prompt) if typed else pl.struct(text=prompt)
    return pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.concat_list(block)))


TEXT_BLOCKS = pl.List(pl.Struct({"text": pl.String}))


def join_text(blocks: pl.Expr) -> pl.Expr:
    """The text of a list of `{"text": ...}` blocks, concatenated."""
    return blocks.list.eval(pl.element().struct.field("text").drop_nulls()).list.join("")


_STEP = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def path(out: pl.Expr, dotted: str) -> pl.Expr:
    """A field of a decoded struct by path: `"usage.input_tokens"`, `"choices[0].message.content"`."""
    expr = out
    for step in dotted.split("."):
        match = _STEP.match(step)
        if not match:
            raise ValueError(f"bad path step {step!r} in {dotted!r}")
        expr = expr.struct.field(match.group(1))
        for index in re.findall(r"\[(\d+)\]", match.group(2)):
            expr = expr.list.first() if index == "0" else expr.list.get(int(index), null_on_oob=True)
    return expr


def tool_definition(schema: OutputSchema) -> dict[str, Any]:
    """The one tool a structured request forces (name, description, JSON Schema)."""
    from tasks.core.schema import DEFAULT_TOOL_DESCRIPTION, DEFAULT_TOOL_NAME

    return {"name": DEFAULT_TOOL_NAME, "description": DEFAULT_TOOL_DESCRIPTION, "schema": schema.tool_schema()}


def first_tool_input(blocks: pl.Expr, block_input: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """The text of the first content block that carries a tool input (null: none does)."""
    return blocks.list.eval(block_input(pl.element()).drop_nulls()).list.first()


# -------------------------------------------------------------------------------------------- on-demand


def invoke_model_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`InvokeModel` kwargs without modelId: the body as JSON bytes."""
    return "invoke_model", {"body": orjson.dumps(body)}


def invoke_model_output(response: Mapping[str, Any]) -> dict[str, Any]:
    """`modelOutput` from an `invoke_model` response (a `body` stream or bytes) or an already decoded body."""
    body = response.get("body", response)
    if hasattr(body, "read"):
        body = body.read()
    return orjson.loads(body) if isinstance(body, (bytes, bytearray, str)) else dict(body)


# ------------------------------------------------------------------------------------------ family spec


@dataclass(frozen=True)
class FamilySpec:
    """Everything about one request/response format; see the module docstring for each part."""

    name: str
    kind: Literal["text", "embedding"]
    model_input: Callable[[InferenceSettings, pl.Expr], pl.Expr]
    output_dtype: pl.Struct
    response: str | Callable[[pl.Expr], pl.Expr]
    input_tokens: str | None = None
    output_tokens: str | None = None
    stop_reason: str | None = None
    matches: Callable[[str], bool] | None = None
    ids: str = ""  # the ids it serves, for the unknown-model message
    on_demand_request: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]] = invoke_model_request
    on_demand_output: Callable[[Mapping[str, Any]], dict[str, Any]] = invoke_model_output
    defaults: Mapping[str, Any] = field(default_factory=dict)
    force_schema: Callable[[pl.Expr, OutputSchema], pl.Expr] | None = None
    structured_dtype: pl.Struct | None = None
    structured_answer: Callable[[pl.Expr], pl.Expr] | None = None
    answer_path: str | None = None

    @property
    def family(self) -> ModelFamily:
        return ModelFamily(self.name, self.kind)

    @property
    def uses_tools(self) -> bool:
        """Whether a structured request forces the schema through tool use (else: instructions)."""
        return self.force_schema is not None

    def structured_input(self, settings: InferenceSettings, prompt: pl.Expr, schema: OutputSchema) -> pl.Expr:
        """`modelInput` asking for `schema`: the family's tool use, or the instructions after the prompt."""
        if self.force_schema is not None:
            return self.force_schema(self.model_input(settings, prompt), schema)
        return self.model_input(settings, pl.concat_str([prompt, pl.lit("\n\n" + schema.instructions())]))

    def extract(self, out: pl.Expr) -> dict[str, pl.Expr]:
        """Result, token counts and stop reason from a decoded `modelOutput` struct."""
        result = self.response(out) if callable(self.response) else path(out, self.response)
        if self.kind == "embedding":
            result = result.cast(pl.List(pl.Float32))

        def read(dotted: str | None, dtype: pl.DataType) -> pl.Expr:
            return path(out, dotted) if dotted else pl.lit(None, dtype=dtype)

        return {
            self.family.result_column: result,
            "input_tokens": read(self.input_tokens, pl.Int64()),
            "output_tokens": read(self.output_tokens, pl.Int64()),
            "stop_reason": read(self.stop_reason, pl.String()),
        }


# --------------------------------------------------------------------------------------------- registry

_SPECS: dict[str, FamilySpec] = {}
# name -> ModelFamily of every registered family; `tasks.core.formats.FAMILIES` is this same dict.
FAMILIES: dict[str, ModelFamily] = {}


def register(spec: FamilySpec) -> FamilySpec:
    """Add a family (the package registers its own modules on import); a name is taken once."""
    if spec.kind not in ("text", "embedding"):
        raise ValueError(f"family {spec.name!r}: kind must be 'text' or 'embedding', not {spec.kind!r}")
    if _SPECS.get(spec.name, spec) is not spec:
        raise ValueError(f"a family named {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    FAMILIES[spec.name] = spec.family
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)
    FAMILIES.pop(name, None)


def registered() -> tuple[FamilySpec, ...]:
    return tuple(_SPECS.values())


def spec_of(family: ModelFamily | FamilySpec | str) -> FamilySpec:
    """The spec behind a family (or its name)."""
    if isinstance(family, FamilySpec):
        return family
    name = family if isinstance(family, str) else family.name
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(f"no request format for family {name!r}") from None
