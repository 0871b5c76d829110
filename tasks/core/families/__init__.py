"""Model families as a registry: one module per request/response format.

Every module of this package (other than `base` and names starting with `_`) declares `FAMILY`, a
`FamilySpec` (`tasks/core/families/base.py` lists its parts), and is registered when the package is imported.
Adding a family is one new module here plus its tests; `tasks.core.formats` is the facade the rest of the
project calls (`resolve_family`, `request_line_expr`, `parse_output_lines`, `invoke_request`...).
A family defined elsewhere (a plug-in, a test) joins with `register(spec)`.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.core.families.base import (
    FAMILIES,
    TEMPLATE_SETTINGS,
    FamilySpec,
    InferenceSettings,
    ModelFamily,
    UnknownModelError,
    register,
    registered,
    spec_of,
    unregister,
)
from tasks.core.model_ids import parse_model_id

__all__ = [
    "FAMILIES",
    "TEMPLATE_SETTINGS",
    "FamilySpec",
    "InferenceSettings",
    "ModelFamily",
    "UnknownModelError",
    "base_model_id",
    "register",
    "registered",
    "resolve_family",
    "spec_of",
    "unregister",
]


def _load_builtin() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name == "base" or module.name.startswith("_"):
            continue
        register(importlib.import_module(f"{__name__}.{module.name}").FAMILY)


_load_builtin()


def _converse_family() -> ModelFamily:
    return spec_of("converse").family


def base_model_id(model_id: str) -> str:
    """The foundation-model id behind a plain id, a geo inference-profile id or a Bedrock ARN."""
    ref = parse_model_id(model_id)
    if not ref.names_model:
        raise UnknownModelError(
            f"cannot tell the request format of {model_id!r} (a {ref.resource} ARN names no model family); "
            f"use --invocation-type Converse, which works for any chat model"
        )
    return ref.base


def resolve_family(model_id: str, invocation_type: str = "InvokeModel") -> ModelFamily:
    """Pick the request/response format for a model id, inference-profile id or ARN.

    `Converse` serves any chat model (also application-profile and provisioned-model ARNs, which name no
    model); an embedding model is refused there. With `InvokeModel` the family whose `matches` accepts the
    model's base id is chosen.
    """
    kind = invocation_type.strip().lower()
    if kind not in ("invokemodel", "converse"):
        raise ValueError(f"invocation type must be InvokeModel or Converse, not {invocation_type!r}")
    converse = kind == "converse"
    try:
        base = base_model_id(model_id)
    except UnknownModelError:
        if converse:  # an application profile or provisioned model: Converse needs no family
            return _converse_family()
        raise
    matched = [s for s in registered() if s.matches is not None and s.matches(base)]
    if len(matched) > 1:
        raise RuntimeError(f"model {model_id!r} matches several families: {[s.name for s in matched]}")
    if matched and matched[0].kind == "embedding":
        if converse:
            raise UnknownModelError(f"{model_id!r} is an embedding model; Converse serves chat models only")
        return matched[0].family
    if converse:
        return _converse_family()
    if matched:
        return matched[0].family
    supported = ", ".join(f"{s.name} ({s.ids})" for s in registered() if s.matches is not None)
    raise UnknownModelError(
        f"unknown model {model_id!r}: supported families are {supported}; "
        f"for any other chat model use --invocation-type Converse"
    )
