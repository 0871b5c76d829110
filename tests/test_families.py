"""The family registry: a family is one module; settings precedence and model ids are read in one place."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import polars as pl
import pytest

from tasks.core import cost, families
from tasks.core.config import RunConfig
from tasks.core.formats import (
    FAMILIES,
    InferenceSettings,
    UnknownModelError,
    base_model_id,
    build_lines,
    invoke_request,
    model_input_dtype,
    parse_invoke_response,
    parse_output_bytes,
    parse_output_lines,
    resolve_family,
    result_schema,
)
from tasks.core.model_ids import parse_model_id
from tasks.core.templates import PromptTemplate
from tests import parrot_family


@pytest.fixture
def parrot() -> Iterator[families.ModelFamily]:
    families.register(parrot_family.FAMILY)
    try:
        yield FAMILIES["parrot"]
    finally:
        families.unregister("parrot")


def test_every_module_of_the_package_is_a_registered_family() -> None:
    assert set(FAMILIES) == {"claude", "nova", "converse", "llama", "mistral", "mistral_chat", "titan_embed"}
    for name, family in FAMILIES.items():
        spec = families.spec_of(family)
        assert (spec.name, spec.family) == (name, family)


def test_a_new_family_is_one_module(parrot: families.ModelFamily) -> None:
    assert resolve_family("us.acme.parrot-v1:0") == parrot
    assert resolve_family("acme.parrot-v1:0", "Converse").name == "converse"
    with pytest.raises(UnknownModelError, match=r"parrot \(acme.parrot-\*\)"):
        resolve_family("acme.crow-v1")

    settings = InferenceSettings.resolve(None, parrot, temperature=0.5)
    assert settings.max_tokens == 77  # the family's default, below explicit and template values
    frame = pl.DataFrame({"record_id": ["a", "b"], "prompt": ["Polly?", 'say "hi"\n']})
    lines = build_lines(frame.lazy(), parrot, settings).collect()
    assert lines["line"][0] == '{"recordId":"a","modelInput":{"text":"Polly?","maxLen":77,"temp":0.5}}'
    assert json.loads(lines["line"][1])["modelInput"]["text"] == 'say "hi"\n'
    assert model_input_dtype(parrot, settings) == pl.Struct({"text": pl.String, "maxLen": pl.Int64, "temp": pl.Float64})

    output = {"replies": [{"say": "Polly!"}], "finish": "done", "tokens": {"in": 3, "out": 1}}
    out_lines = [
        json.dumps({"recordId": "a", "modelInput": {}, "modelOutput": output}),
        json.dumps({"recordId": "b", "error": {"errorCode": 429, "errorMessage": "slow down"}}),
    ]
    parsed = parse_output_lines(pl.DataFrame({"line": out_lines}), parrot)
    assert parsed.schema == pl.Schema({"record_id": pl.String, **result_schema(parrot)})
    assert parsed.rows() == [
        ("a", "Polly!", None, None, 3, 1, "done"),
        ("b", None, "429", "slow down", None, None, None),
    ]
    assert parse_output_bytes("\n".join(out_lines).encode(), parrot).equals(parsed)

    operation, kwargs = invoke_request(parrot, settings, "Polly?")
    assert operation == "invoke_model" and json.loads(kwargs["body"]) == {"text": "Polly?", "maxLen": 77, "temp": 0.5}
    row = parse_invoke_response(parrot, {"body": io.BytesIO(json.dumps(output).encode())})
    assert row == {"response": "Polly!", "error_code": None, "error_message": None, "input_tokens": 3,
                   "output_tokens": 1, "stop_reason": "done"}


def test_registering_a_taken_name_or_an_overlapping_family_is_refused(parrot: families.ModelFamily) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="already registered"):
        families.register(replace(parrot_family.FAMILY))
    families.register(replace(parrot_family.FAMILY, name="parrot2"))
    try:
        with pytest.raises(RuntimeError, match="several families"):
            resolve_family("acme.parrot-v1")
    finally:
        families.unregister("parrot2")


# -------------------------------------------------------------------------------------------- settings


def test_settings_precedence_is_explicit_then_template_then_family_then_built_in(
    parrot: families.ModelFamily,
) -> None:
    template = PromptTemplate.from_text("t", "{x}", system="tmpl sys", max_tokens=64, temperature=0.9)
    s = InferenceSettings.resolve(template, parrot, temperature=0.1, top_p=None)
    assert (s.max_tokens, s.temperature, s.top_p, s.system) == (64, 0.1, None, "tmpl sys")
    assert InferenceSettings.resolve(None, parrot).max_tokens == 77
    assert InferenceSettings.resolve(None, "claude").max_tokens == 512
    assert InferenceSettings.resolve(template, parrot, max_tokens=5).max_tokens == 5
    # A max_tokens of 0 and an empty system prompt are unset, not values.
    assert InferenceSettings.resolve(template, max_tokens=0, system="") == InferenceSettings.resolve(template)
    embed = InferenceSettings.resolve(template, "titan_embed", dimensions=256, normalize=False)
    assert (embed.dimensions, embed.normalize) == (256, False)
    with pytest.raises(TypeError, match="unknown inference options"):
        InferenceSettings.resolve(None, max_token=5)


def test_from_options_and_with_template_are_resolve() -> None:
    template = PromptTemplate.from_text("t", "{x}", system="tmpl sys", top_p=0.3)
    assert InferenceSettings.from_options(template, temperature=0.2) == InferenceSettings.resolve(
        template, temperature=0.2
    )
    mine = InferenceSettings(max_tokens=7, system="mine")
    assert mine.with_template(template) == InferenceSettings(max_tokens=7, system="mine", top_p=0.3)
    assert mine.with_template(None) == mine


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_tokens": 100, "temperature": 0.0, "top_p": 0.5, "system_prompt": "mine"},
        {"max_tokens": 0, "system_prompt": ""},
        {"embedding_dimensions": 256, "embedding_normalize": False},
    ],
)
@pytest.mark.parametrize("prompt_id", ["question_answering", "joke_about_topic", None])
def test_the_flow_settings_are_resolve(options: dict, prompt_id: str | None) -> None:
    """`settings.inference_settings` agrees with the one call that is to replace its body."""
    from tasks.core.settings import inference_settings
    from tasks.core.templates import load_template

    cfg = RunConfig(model_id="anthropic.claude-3-haiku-20240307-v1:0", input_path="x.csv", **options)
    template = load_template(prompt_id=prompt_id) if prompt_id else None
    family = resolve_family(cfg.model_id, cfg.invocation_type)
    resolved = InferenceSettings.resolve(
        template, family, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        system=cfg.system_prompt, dimensions=cfg.embedding_dimensions, normalize=cfg.embedding_normalize,
    )
    assert resolved == inference_settings(cfg, template)


# ------------------------------------------------------------------------------------------- model ids


@pytest.mark.parametrize(
    ("model_id", "base", "is_global"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0", False),
        (" US.Anthropic.Claude-3-Haiku-20240307-v1:0 ", "anthropic.claude-3-haiku-20240307-v1:0", False),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-haiku-4-5-20251001-v1:0", True),
        ("us-gov.meta.llama3-8b-instruct-v1:0", "meta.llama3-8b-instruct-v1:0", False),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0", "amazon.titan-embed-text-v2:0",
         False),
        ("arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0",
         False),
    ],
)
def test_families_and_prices_read_model_ids_alike(model_id: str, base: str, is_global: bool) -> None:
    assert base_model_id(model_id) == base
    assert cost.normalize_model_id(model_id) == (base, is_global)


def test_an_arn_that_hides_its_model() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    ref = parse_model_id(arn)
    assert (ref.resource, ref.names_model, ref.base) == ("application-inference-profile", False, "abc123")
    with pytest.raises(UnknownModelError, match="application-inference-profile ARN names no model family"):
        base_model_id(arn)
    assert cost.normalize_model_id(arn) == ("abc123", False)
