"""Prompt templates as data, rendered as Polars expressions.

A template is a YAML file `prompts/<prompt_id>.yaml` (or any file passed by path) with `str.format`-style
placeholders: `{topic}` reads the `topic` column, `{{`/`}}` are literal braces. Rendering compiles the
template once into a `pl.concat_str` of literals and columns, so a million rows cost one expression,
not a million `str.format` calls. Problems that would waste a batch job are caught here, before upload:
a missing column is a `TemplateError`; a null in a key column is that row's `input_error`.

A template may declare `output_schema` (a JSON Schema subset, `tasks/core/schema.py`): requests then ask
for that shape and results gain a typed `output` column. It is checked when the template loads.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tasks.core.schema import OutputSchema, SchemaError

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


class TemplateError(ValueError):
    """A template that cannot be loaded, parsed or applied to the input's columns."""


@dataclass(frozen=True)
class PromptTemplate:
    """One use case: the prompt text, the columns it reads and the inference defaults it suggests."""

    prompt_id: str
    template: str
    keys: tuple[str, ...]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    description: str = ""
    output_schema: str | None = None  # compact JSON of a validated `output_schema`

    @property
    def schema(self) -> OutputSchema | None:
        return OutputSchema.parse(self.output_schema) if self.output_schema else None

    @classmethod
    def from_text(cls, prompt_id: str, template: str, **defaults: Any) -> PromptTemplate:
        """Build a template from its text; the keys are parsed from the placeholders."""
        if defaults.get("output_schema") is not None:
            defaults["output_schema"] = _schema_json(defaults["output_schema"], f"template {prompt_id!r}")
        return cls(
            prompt_id=prompt_id, template=template, keys=template_keys(template, prompt_id), **defaults
        )


def _schema_json(raw: Any, origin: str) -> str:
    try:
        return OutputSchema.parse(raw).schema_json()
    except SchemaError as exc:
        raise TemplateError(f"{origin}: {exc}") from None


def _parse(template: str, prompt_id: str) -> list[tuple[str, str | None]]:
    """(literal, key) pairs; rejects anything beyond plain `{name}` so rendering stays columnar."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # e.g. a single '{' or '}'
        raise TemplateError(
            f"template {prompt_id!r} is not a valid format string ({exc}); "
            f"write literal braces as {{{{ and }}}}"
        ) from exc
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        plain = field is not None and field.strip() and not field.isdigit() and not set(field) & set(".[]")
        if field is not None and (not plain or spec or conversion):
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise TemplateError(
                f"template {prompt_id!r}: placeholder {{{shown}}} is not a plain column name; "
                f"use {{column}} (and {{{{ }}}} for literal braces)"
            )
        pieces.append((literal, field))
    return pieces


def template_keys(template: str, prompt_id: str = "<inline>") -> tuple[str, ...]:
    """The distinct formatting keys in order of first use."""
    return tuple(dict.fromkeys(key for _, key in _parse(template, prompt_id) if key is not None))


def template_from_dict(data: dict[str, Any], *, default_id: str, origin: str) -> PromptTemplate:
    """Validate one YAML document into a `PromptTemplate` (unknown fields are errors, to catch typos)."""
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        raise TemplateError(f"{origin}: expected a mapping with a 'template' string")
    allowed = {
        "prompt_id", "template", "keys", "system", "max_tokens", "temperature", "top_p", "description", "output_schema",
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TemplateError(f"{origin}: unknown fields {unknown}; allowed: {sorted(allowed)}")
    prompt_id = str(data.get("prompt_id") or default_id)
    keys = template_keys(data["template"], prompt_id)
    declared = data.get("keys")
    if declared is not None and set(declared) != set(keys):
        raise TemplateError(
            f"{origin}: declared keys {sorted(declared)} differ from the placeholders {sorted(keys)}"
        )
    return PromptTemplate(
        prompt_id=prompt_id,
        template=data["template"],
        keys=keys,
        system=data.get("system"),
        max_tokens=int(data["max_tokens"]) if data.get("max_tokens") is not None else None,
        temperature=float(data["temperature"]) if data.get("temperature") is not None else None,
        top_p=float(data["top_p"]) if data.get("top_p") is not None else None,
        description=str(data.get("description") or ""),
        output_schema=_schema_json(data["output_schema"], origin) if data.get("output_schema") is not None else None,
    )


def list_templates(prompts_dir: str | Path | None = None) -> list[str]:
    """The prompt ids available in the prompts directory."""
    folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    return sorted(p.stem for p in folder.glob("*.yaml")) + sorted(p.stem for p in folder.glob("*.yml"))


def load_template(
    prompt_id: str | None = None, path: str | Path | None = None, *, prompts_dir: str | Path | None = None
) -> PromptTemplate:
    """A template from an explicit file (`path`) or by id from `prompts/` (`prompt_id`)."""
    if path is None:
        if not prompt_id:
            raise TemplateError("give a prompt_id or a template file path")
        folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
        candidates = [folder / f"{prompt_id}.yaml", folder / f"{prompt_id}.yml"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise TemplateError(
                f"no prompt template {prompt_id!r} in {folder}; available: {list_templates(folder)} "
                f"(add prompts/{prompt_id}.yaml or pass a template file)"
            )
        path = found
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read template file {file}: {exc}") from exc
    template = template_from_dict(data, default_id=file.stem, origin=str(file))
    if prompt_id and template.prompt_id != prompt_id:
        raise TemplateError(f"{file} defines prompt_id {template.prompt_id!r}, not {prompt_id!r}")
    return template


# -------------------------------------------------------------------------------------------- rendering


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as Utf8: strings as-is, scalars cast, nested values as compact JSON."""
    col = pl.col(name)
    if dtype == pl.String:
        return col
    if dtype.is_nested():
        # json_encode wraps the value in {"v":...}; cut the wrapper off, keeping nulls null.
        encoded = pl.struct(col.alias("v")).struct.json_encode()
        return pl.when(col.is_null()).then(None).otherwise(encoded.str.slice(5, encoded.str.len_chars() - 6))
    if dtype == pl.Binary:
        raise TemplateError(f"column {name!r} is binary; a prompt can only read text, numbers or dates")
    return col.cast(pl.String)


def _is_missing(name: str, dtype: pl.DataType) -> pl.Expr:
    missing = pl.col(name).is_null()
    if dtype.is_float():
        missing = missing | pl.col(name).is_nan()  # pandas-born data marks gaps with NaN
    return missing


def _check_columns(needed: tuple[str, ...], schema: pl.Schema, prompt_id: str) -> None:
    missing = [k for k in needed if k not in schema]
    if missing:
        raise TemplateError(
            f"template {prompt_id!r} needs column(s) {missing}, which the input does not have; "
            f"columns present: {list(schema.names())}"
        )


def _finish(lf: pl.LazyFrame, prompt: pl.Expr, errors: list[pl.Expr], names: tuple[str, str]) -> pl.LazyFrame:
    """Add the prompt and error columns; a row with any error gets a null prompt."""
    empty = pl.when(prompt.str.len_bytes() == 0).then(pl.lit("prompt is empty"))
    all_errors = [*errors, empty]
    error = pl.concat_str(all_errors, separator="; ", ignore_nulls=True)
    any_error = pl.any_horizontal([e.is_not_null() for e in all_errors])
    return lf.with_columns(
        pl.when(any_error).then(None).otherwise(prompt).cast(pl.String).alias(names[0]),
        pl.when(any_error).then(error).otherwise(None).cast(pl.String).alias(names[1]),
    )


def render_prompts(
    lf: pl.LazyFrame,
    template: PromptTemplate,
    *,
    prompt_column: str = "prompt",
    error_column: str = "input_error",
) -> pl.LazyFrame:
    """Add Utf8 `prompt` and `input_error` (null when the row is fine) to every row.

    Raises `TemplateError` before any data is read when a key column is absent. A null (or NaN) key makes
    that row's `input_error` "column 'topic' is null" instead of rendering the text "None"/"nan".
    """
    schema = lf.collect_schema()
    _check_columns(template.keys, schema, template.prompt_id)
    parts: list[pl.Expr] = []
    for literal, key in _parse(template.template, template.prompt_id):
        if literal:
            parts.append(pl.lit(literal))
        if key is not None:
            parts.append(_as_text(key, schema[key]))
    prompt = pl.concat_str(parts) if parts else pl.lit("")
    errors = [pl.when(_is_missing(k, schema[k])).then(pl.lit(f"column '{k}' is null")) for k in template.keys]
    return _finish(lf, prompt, errors, (prompt_column, error_column))


def select_input(
    lf: pl.LazyFrame,
    column: str = "input_text",
    *,
    prompt_column: str = "prompt",
    error_column: str = "input_error",
) -> pl.LazyFrame:
    """No template (embeddings, or raw prompts): the column's text is the prompt as it stands."""
    schema = lf.collect_schema()
    if column not in schema:
        raise TemplateError(
            f"the model reads column {column!r} (no template), which the input does not have; "
            f"columns present: {list(schema.names())}; pick another with --input-column"
        )
    error = pl.when(_is_missing(column, schema[column])).then(pl.lit(f"column '{column}' is null"))
    return _finish(lf, _as_text(column, schema[column]), [error], (prompt_column, error_column))
