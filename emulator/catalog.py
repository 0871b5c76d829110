"""Which model identifiers exist: Bedrock's foundation models and system inference profiles (`models.json`),
served by ListFoundationModels / GetFoundationModel / ListInferenceProfiles / GetInferenceProfile, and
checked by CreateModelInvocationJob, InvokeModel and Converse.

An identifier is a model id (`anthropic.claude-3-haiku-20240307-v1:0`), a system inference profile id
(`us.anthropic.claude-3-5-haiku-20241022-v1:0`), or an ARN of either (`arn:aws:bedrock:us-east-1::
foundation-model/<id>`, `arn:aws:bedrock:us-east-1:<account>:inference-profile/<profile id>`), or an
application inference profile ARN (`...:application-inference-profile/<id>`; on AWS its id is opaque, here
it must contain the model id). A system profile exists in the regions of its geography (`us.` in `us-*`,
`eu.` in `eu-*`, `apac.` in `ap-*`, `global.` in all of these); an ARN must name the caller's region. The
foundation models themselves are the same in every region (the union of what AWS offers per region).

Anything else is refused as AWS refuses it: `ValidationException` "The provided model identifier is
invalid." The profile's `extra_models` (ids or fnmatch patterns) adds made-up ids for tests.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from emulator.families import Family, resolve_family
from emulator.jobs import ACCOUNT_ID
from emulator.service_model import ApiError, check_response, iso

CATALOG_FILE = Path(__file__).with_name("models.json")
INVALID_MODEL = "The provided model identifier is invalid."
NO_SUCH_MODEL = "Could not resolve the foundation model from the provided model identifier."
NOT_CHAT = (
    "This action doesn't support the model that you provided. Try again with a supported text or chat model."
)
# System profiles appeared with cross-region inference (2024-08-27); a model id's own date is used when later.
PROFILES_LAUNCHED = datetime(2024, 8, 27, tzinfo=UTC)
_DATE = re.compile(r"-(20\d{6})-")
_ARN = re.compile(
    r"^arn:aws(?:-[a-z-]+)?:bedrock:(?P<region>[a-z0-9-]*):(?P<account>\d*):"
    r"(?P<kind>foundation-model|inference-profile|application-inference-profile)/(?P<id>.+)$"
)
SUMMARY_KEYS = (
    "modelArn", "modelId", "modelName", "providerName", "inputModalities", "outputModalities",
    "responseStreamingSupported", "customizationsSupported", "inferenceTypesSupported", "modelLifecycle",
)  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """What an identifier names: the foundation model behind it, and the profile it went through."""

    model_id: str
    model: dict[str, Any] | None  # the catalog entry; None for an `extra_models` id
    profile_id: str | None = None

    @property
    def embedding(self) -> bool:
        return self.model is not None and "EMBEDDING" in self.model["outputModalities"]

    def family(self, invocation_type: str | None = "InvokeModel") -> Family | None:
        """The emulated family answering for this model (Converse: any text model)."""
        if invocation_type == "Converse":
            return None if self.embedding else Family.CONVERSE
        return resolve_family(self.model_id, invocation_type)


class Catalog:
    def __init__(self, data: dict[str, Any]) -> None:
        self.geographies: dict[str, dict[str, Any]] = data["geographies"]
        self.models: dict[str, dict[str, Any]] = {m["modelId"]: m for m in data["models"]}
        # longest first, so that an application profile id names the most specific model it contains
        self._by_length = sorted(self.models, key=len, reverse=True)

    # ------------------------------------------------------------------------------------------ lookup
    def geographies_of(self, region: str) -> list[str]:
        return [g for g, geo in self.geographies.items() if region.startswith(tuple(geo["serves"]))]

    def profile(self, profile_id: str, region: str) -> tuple[str, dict[str, Any]] | None:
        """(geography, model) of a system profile id available in `region`."""
        geo, _, model_id = profile_id.partition(".")
        model = self.models.get(model_id)
        if model is None or geo not in model["profiles"] or geo not in self.geographies_of(region):
            return None
        return geo, model

    def resolve(self, identifier: str, region: str, extra: Iterable[str] = ()) -> Resolved | None:
        """The model an identifier names in `region`, or None if AWS would call it invalid."""
        kind, key = "", identifier
        if match := _ARN.match(identifier):
            if match["region"] != region:
                return None
            kind, key = match["kind"], match["id"]
        if kind == "application-inference-profile":
            return self._inside(key, extra)
        if kind in ("", "foundation-model") and key in self.models:
            return Resolved(key, self.models[key])
        if kind in ("", "inference-profile") and (found := self.profile(key, region)) is not None:
            return Resolved(found[1]["modelId"], found[1], key)
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in extra):
            return Resolved(key, None)
        return None

    def _inside(self, profile_id: str, extra: Iterable[str]) -> Resolved | None:
        model_id = next((m for m in self._by_length if m in profile_id), None)
        if model_id is not None:
            return Resolved(model_id, self.models[model_id], profile_id)
        if any(fnmatch.fnmatchcase(profile_id, pattern) for pattern in extra):
            return Resolved(profile_id, None, profile_id)
        return None

    def require(
        self, identifier: str, region: str, extra: Iterable[str], invocation_type: str | None, service: str
    ) -> tuple[Resolved, Family]:
        """The model and the family answering for it, or the ValidationException AWS (or, for a real model
        the emulator cannot answer, the emulator) gives."""
        resolved = self.resolve(identifier, region, extra)
        if resolved is None:
            raise ApiError("ValidationException", INVALID_MODEL, service)
        family = resolved.family(invocation_type)
        if family is not None:
            return resolved, family
        if invocation_type == "Converse":
            raise ApiError("ValidationException", NOT_CHAT, service)
        raise ApiError(
            "ValidationException",
            f"The Bedrock emulator does not emulate the request format of {resolved.model_id}. Emulated "
            "formats: Anthropic Claude, Amazon Nova, Meta Llama, Mistral, Amazon Titan Text Embeddings V2; "
            "Converse (modelInvocationType Converse, or the Converse API) works with any text model.",
            service,
        )

    # --------------------------------------------------------------------------------------- responses
    def summary(self, model: dict[str, Any], region: str) -> dict[str, Any]:
        out = {k: model[k] for k in SUMMARY_KEYS if k in model}
        return {"modelArn": f"arn:aws:bedrock:{region}::foundation-model/{model['modelId']}", **out}

    def list_models(self, region: str, filters: dict[str, Any]) -> list[dict[str, Any]]:
        provider = (filters.get("byProvider") or "").lower()
        out = []
        for model in self.models.values():
            if provider and provider not in (model["providerName"].lower(), model["modelId"].split(".")[0]):
                continue
            if filters.get("byOutputModality") not in (None, *model["outputModalities"]):
                continue
            if filters.get("byInferenceType") not in (None, *model["inferenceTypesSupported"]):
                continue
            if filters.get("byCustomizationType") not in (None, *model["customizationsSupported"]):
                continue
            out.append(self.summary(model, region))
        return out

    def get_model(self, identifier: str, region: str) -> dict[str, Any]:
        match = _ARN.match(identifier)
        key = match["id"] if match and match["kind"] == "foundation-model" else identifier
        model = self.models.get(key)
        if model is None or (match and match["region"] != region):
            raise ApiError("ResourceNotFoundException", NO_SUCH_MODEL)
        return self.summary(model, region)

    def describe_profile(self, geo: str, model: dict[str, Any], region: str) -> dict[str, Any]:
        profile_id = f"{geo}.{model['modelId']}"
        geography = self.geographies[geo]
        created = iso(_created(model["modelId"]))
        name = f"{geography['label']} {model['providerName']} {model['modelName']}"
        regions = geography["regions"]
        return {
            "inferenceProfileName": name,
            "description": f"Routes requests to {model['providerName']} {model['modelName']} in "
            + ", ".join(regions[:-1])
            + f" and {regions[-1]}.",
            "createdAt": created,
            "updatedAt": created,
            "inferenceProfileArn": f"arn:aws:bedrock:{region}:{ACCOUNT_ID}:inference-profile/{profile_id}",
            "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/{model['modelId']}"} for r in regions],
            "inferenceProfileId": profile_id,
            "status": "ACTIVE",
            "type": "SYSTEM_DEFINED",
        }

    def list_profiles(self, region: str, type_equals: str | None) -> list[dict[str, Any]]:
        if type_equals not in (None, "SYSTEM_DEFINED"):
            return []  # application profiles cannot be created here
        geos = self.geographies_of(region)
        return [
            self.describe_profile(geo, model, region)
            for geo in geos
            for model in self.models.values()
            if geo in model["profiles"]
        ]

    def get_profile(self, identifier: str, region: str) -> dict[str, Any]:
        match = _ARN.match(identifier)
        key = match["id"] if match and match["kind"] == "inference-profile" else identifier
        found = None if match and (match["kind"] != "inference-profile" or match["region"] != region) else (
            self.profile(key, region)
        )
        if found is None:
            raise ApiError("ResourceNotFoundException", f"The inference profile {identifier} was not found.")
        return self.describe_profile(*found, region)


def _created(model_id: str) -> datetime:
    if match := _DATE.search(model_id):
        return max(PROFILES_LAUNCHED, datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC))
    return PROFILES_LAUNCHED


def _check(catalog: Catalog) -> None:
    """Every response the catalog can give satisfies botocore's shapes: a bad line in models.json fails at
    import, not in a client."""
    for geo in catalog.geographies:
        region = catalog.geographies[geo]["regions"][0]
        check_response({"modelSummaries": catalog.list_models(region, {})}, "ListFoundationModelsResponse")
        check_response(
            {"inferenceProfileSummaries": catalog.list_profiles(region, None)}, "ListInferenceProfilesResponse"
        )
    for model in catalog.models.values():
        unknown = set(model["profiles"]) - set(catalog.geographies)
        if unknown:
            raise ValueError(f"{model['modelId']}: unknown geographies {sorted(unknown)}")


@cache
def catalog() -> Catalog:
    built = Catalog(json.loads(CATALOG_FILE.read_text()))
    _check(built)
    return built
