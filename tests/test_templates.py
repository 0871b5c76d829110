"""Prompt templates: data files in prompts/, columnar rendering, errors found before any upload."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tasks.core.templates import (
    PromptTemplate,
    TemplateError,
    list_templates,
    load_template,
    render_prompts,
    select_input,
)


def _render(template: PromptTemplate, frame: pl.DataFrame) -> pl.DataFrame:
    return render_prompts(frame.lazy(), template).collect()


def test_reference_use_cases_ship_as_templates() -> None:
    assert {"joke_about_topic", "sentiment_classifier", "question_answering"} <= set(list_templates())
    assert load_template("joke_about_topic").keys == ("topic",)
    assert load_template("sentiment_classifier").keys == ("input_text",)
    qa = load_template("question_answering")
    assert qa.keys == ("source",) and qa.system and qa.max_tokens == 1024


def test_joke_template_renders_one_prompt_per_row() -> None:
    out = _render(load_template("joke_about_topic"), pl.DataFrame({"topic": ["cats", "tax law"]}))
    assert out["prompt"].to_list() == [
        "Tell me a joke about cats in less than 50 words.",
        "Tell me a joke about tax law in less than 50 words.",
    ]
    assert out["input_error"].to_list() == [None, None]


def test_a_user_adds_a_template_without_code(tmp_path: Path) -> None:
    (tmp_path / "summarise.yaml").write_text(
        "description: one-line summary\n"
        "system: You summarise.\n"
        "template: 'Summarise {title}: {body}'\n"
        "max_tokens: 100\n"
        "top_p: 0.9\n"
    )
    assert list_templates(tmp_path) == ["summarise"]
    template = load_template("summarise", prompts_dir=tmp_path)
    assert template == PromptTemplate(
        prompt_id="summarise",
        template="Summarise {title}: {body}",
        keys=("title", "body"),
        system="You summarise.",
        max_tokens=100,
        top_p=0.9,
        description="one-line summary",
    )
    assert load_template(path=tmp_path / "summarise.yaml") == template


def test_unknown_prompt_id_lists_what_exists(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="joke_about_topic"):
        load_template("no_such_prompt")


def test_template_file_typos_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("template: '{x}'\nmax_token: 5\n")
    with pytest.raises(TemplateError, match="max_token"):
        load_template(path=bad)
    bad.write_text("template: '{x}'\nkeys: [y]\n")
    with pytest.raises(TemplateError, match="declared keys"):
        load_template(path=bad)


def test_missing_key_names_key_template_and_columns() -> None:
    with pytest.raises(TemplateError) as err:
        render_prompts(
            pl.LazyFrame({"record_id": ["a"], "subject": ["x"]}), load_template("joke_about_topic")
        )
    message = str(err.value)
    assert "'topic'" in message and "'joke_about_topic'" in message
    assert "['record_id', 'subject']" in message


def test_null_key_is_the_rows_error_not_the_text_none() -> None:
    template = PromptTemplate.from_text("pair", "{a} and {b}")
    frame = pl.DataFrame({"a": ["x", None, None], "b": [1.5, 2.0, float("nan")]})
    out = _render(template, frame)
    assert out["prompt"].to_list() == ["x and 1.5", None, None]
    assert out["input_error"].to_list() == [
        None,
        "column 'a' is null",
        "column 'a' is null; column 'b' is null",
    ]
    assert not out["prompt"].drop_nulls().str.contains("None|nan|null").any()


def test_literal_braces_and_non_string_columns() -> None:
    template = PromptTemplate.from_text("j", 'Reply as JSON {{"n": {n}, "ok": {ok}, "tags": {tags}}}')
    assert template.keys == ("n", "ok", "tags")
    frame = pl.DataFrame({"n": [7], "ok": [True], "tags": [["a", "b"]]})
    assert _render(template, frame)["prompt"][0] == 'Reply as JSON {"n": 7, "ok": true, "tags": ["a","b"]}'


@pytest.mark.parametrize("text", ["{a.b}", "{0}", "{x!r}", "{x:>5}", "oops { here", "}"])
def test_only_plain_column_placeholders_are_allowed(text: str) -> None:
    with pytest.raises(TemplateError):
        PromptTemplate.from_text("t", text)


def test_an_empty_prompt_is_an_input_error() -> None:
    out = _render(PromptTemplate.from_text("t", "{x}"), pl.DataFrame({"x": ["", "y"]}))
    assert out["input_error"].to_list() == ["prompt is empty", None]


def test_embeddings_read_input_text_or_a_named_column() -> None:
    frame = pl.LazyFrame({"input_text": ["a", None], "doc": ["d1", "d2"]})
    out = select_input(frame).collect()
    assert out["prompt"].to_list() == ["a", None]
    assert out["input_error"].to_list() == [None, "column 'input_text' is null"]
    assert select_input(frame, "doc").collect()["prompt"].to_list() == ["d1", "d2"]
    with pytest.raises(TemplateError, match=r"'body'.*columns present: \['input_text', 'doc'\]"):
        select_input(frame, "body")


def test_rendering_is_a_single_expression_not_a_python_loop() -> None:
    plan = render_prompts(pl.LazyFrame({"topic": ["x"]}), load_template("joke_about_topic")).explain()
    assert "concat_str" in plan or "str.concat" in plan
    assert "map" not in plan.lower() and "python" not in plan.lower()
