"""Model ids: the one normaliser for a plain id, a geo inference-profile id or a Bedrock ARN.

`tasks.core.families` picks a request format from it and `tasks.core.cost` a price row, so both read an id the
same way: `arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude-...` is the
`anthropic.claude-...` model through the `us` geography.
"""

from __future__ import annotations

from dataclasses import dataclass

# System-defined cross-region inference profiles prefix the model id with a geography.
GEO_PREFIXES = frozenset({"us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"})
# ARN resource types whose name is (a geography plus) a model id; others (application inference
# profiles, provisioned models...) hide the model behind an opaque name.
MODEL_RESOURCES = ("foundation-model", "inference-profile")


@dataclass(frozen=True)
class ModelRef:
    """What a model id names: the lower-case `provider.model...` id, its geography and ARN resource type."""

    model_id: str  # as given
    base: str  # lower case, geography and ARN removed: `anthropic.claude-3-haiku-20240307-v1:0`
    geo: str | None = None  # `us`, `eu`, `global`... for an inference-profile id
    resource: str | None = None  # the ARN's resource type (`foundation-model`...); None for a plain id

    @property
    def is_global(self) -> bool:
        return self.geo == "global"

    @property
    def names_model(self) -> bool:
        """False for an ARN of an application profile, provisioned model...: `base` is then no model id."""
        return self.resource is None or self.resource in MODEL_RESOURCES


def parse_model_id(model_id: str) -> ModelRef:
    """Split a model id, inference-profile id or ARN into its parts (never raises)."""
    value = model_id.strip()
    resource = None
    if value.startswith("arn:"):
        resource, slash, name = value.split(":", 5)[-1].partition("/")
        if slash:
            value = name
    head, dot, rest = value.partition(".")
    geo = head.lower() if dot and head.lower() in GEO_PREFIXES else None
    return ModelRef(model_id=model_id, base=(rest if geo else value).lower(), geo=geo, resource=resource)
