"""What a run's parameters mean for its requests: the model family, the template, the inference settings
(the one precedence lives in `InferenceSettings.resolve`), the request keys' scope and the job quotas."""

from __future__ import annotations

from tasks.core.answers import RequestScope
from tasks.core.config import RunConfig
from tasks.core.formats import InferenceSettings, ModelFamily, model_input_dtype, resolve_family
from tasks.core.plan import Quotas
from tasks.core.templates import PromptTemplate, load_template


def inference_settings(cfg: RunConfig, template: PromptTemplate | None) -> InferenceSettings:
    """Flow parameters win over the template's defaults, which win over the family's."""
    return InferenceSettings.resolve(
        template, resolve_family(cfg.model_id, cfg.invocation_type),
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, system=cfg.system_prompt,
        dimensions=cfg.embedding_dimensions, normalize=cfg.embedding_normalize,
    )


def resolve(cfg: RunConfig) -> tuple[ModelFamily, PromptTemplate | None, InferenceSettings]:
    """The family, template (text models only) and settings every step builds requests with."""
    family = resolve_family(cfg.model_id, cfg.invocation_type)
    template = None
    if family.kind == "text":
        if not (cfg.prompt_id or cfg.prompt_file):
            raise ValueError(f"model {cfg.model_id} generates text: give prompt_id or prompt_file")
        template = load_template(prompt_id=cfg.prompt_id, path=cfg.prompt_file)
        # A template's output_schema travels with the family: requests force it, collect decodes it.
        family = family.structured(template.output_schema)
    return family, template, inference_settings(cfg, template)


def request_scope(cfg: RunConfig) -> RequestScope:
    """What this run's request keys are relative to (model, invocation type, the modelInput type)."""
    family, _, settings = resolve(cfg)
    return RequestScope(cfg.model_id, cfg.invocation_type, model_input_dtype(family, settings))


def quotas(cfg: RunConfig) -> Quotas:
    return Quotas(min_records=cfg.min_records_per_job, max_records=cfg.max_records_per_job,
                  slots=cfg.max_concurrent_jobs)
