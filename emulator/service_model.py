"""Bedrock's API as botocore defines it: request validation and error shapes come from the service models.

Using the same JSON models boto3 uses means patterns, bounds, required members and error HTTP statuses are
the ones AWS publishes, not hand-copied constants that drift.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from typing import Any

from botocore.loaders import Loader

CONTROL = "bedrock"
NOT_NULL = "Member must not be null"
RUNTIME = "bedrock-runtime"


@cache
def service_model(service: str) -> dict[str, Any]:
    return Loader().load_service_model(service, "service-2")


def shapes(service: str) -> dict[str, Any]:
    return service_model(service)["shapes"]


class ApiError(Exception):
    """An AWS error response; the HTTP status comes from the error's shape in the service model."""

    def __init__(self, code: str, message: str, service: str = CONTROL) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        shape = shapes(service).get(code) or shapes(CONTROL)[code]
        self.status = int(shape["error"]["httpStatusCode"])


def _validation_message(errors: list[str]) -> str:
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(errors)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Display text in responses that AWS itself gives outside the model's bounds: foundation model names such
# as "Titan Text Embeddings V2" are longer than BrandedName's 20 characters, and system profile names and
# descriptions ("US Anthropic Claude 3.5 Haiku", "Routes requests to ... in us-east-1, us-east-2 and
# us-west-2.") use characters their patterns leave out. Responses are checked for type only there.
FREE_TEXT = frozenset({"BrandedName", "InferenceProfileName", "InferenceProfileDescription"})


def _check(
    value: Any, shape_name: str, path: str, service: str, errors: list[str], response: bool = False
) -> None:
    shape = shapes(service)[shape_name]
    kind = shape["type"]
    shown = repr(value) if not isinstance(value, dict | list) else "..."
    prefix = f"Value {shown} at '{path}' failed to satisfy constraint: Member must"
    if shape.get("document"):
        return
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"{prefix} be a structure")
            return
        members = shape.get("members", {})
        if response:
            extra = [name for name in value if name not in members]
            errors.extend(f"Member '{_join(path, name)}' is not in {shape_name}" for name in extra)
        for name in shape.get("required", []):
            if value.get(name) is None:
                where = _join(path, name)
                errors.append(f"Value null at '{where}' failed to satisfy constraint: " + NOT_NULL)
        present = [name for name in members if value.get(name) is not None]
        if shape.get("union") and len(present) != 1:
            errors.append(
                f"Value at '{path}' failed to satisfy constraint: Member must have exactly one member set"
            )
        for name in present:
            _check(value[name], members[name]["shape"], _join(path, name), service, errors, response)
    elif kind == "list":
        if not isinstance(value, list):
            errors.append(f"{prefix} be a list")
            return
        _bounds(len(value), shape, f"{prefix} have length", errors)
        for i, item in enumerate(value):
            _check(item, shape["member"]["shape"], f"{path}.{i + 1}.member", service, errors, response)
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{prefix} be a string")
            return
        if "enum" in shape and value not in shape["enum"]:
            errors.append(f"{prefix} satisfy enum value set: [{', '.join(shape['enum'])}]")
        if response and shape_name in FREE_TEXT:
            return
        _bounds(len(value), shape, f"{prefix} have length", errors)
        if "pattern" in shape and not _regex(shape["pattern"]).fullmatch(value):
            errors.append(f"{prefix} satisfy regular expression pattern: {shape['pattern']}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{prefix} be an integer")
            return
        _bounds(value, shape, f"{prefix} be", errors)
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"{prefix} be a boolean")
    elif kind == "timestamp" and response and not _is_timestamp(value):
        errors.append(f"{prefix} be a timestamp")


def _is_timestamp(value: Any) -> bool:
    if isinstance(value, datetime):
        return True
    if not isinstance(value, str):
        return False
    try:
        parse_time(value)
    except ValueError:
        return False
    return True


def _bounds(n: int, shape: dict[str, Any], what: str, errors: list[str]) -> None:
    if "min" in shape and n < shape["min"]:
        errors.append(f"{what} greater than or equal to {shape['min']}")
    if "max" in shape and n > shape["max"]:
        errors.append(f"{what} less than or equal to {shape['max']}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def validate(request: dict[str, Any], shape_name: str, service: str = CONTROL) -> None:
    """Raise ValidationException (worded as AWS words it) unless `request` satisfies `shape_name`."""
    errors: list[str] = []
    _check(request, shape_name, "", service, errors)
    if errors:
        raise ApiError("ValidationException", _validation_message(errors), service)


def check_response(payload: dict[str, Any], shape_name: str, service: str = CONTROL) -> None:
    """Raise ValueError unless `payload` is a `shape_name` as botocore's model defines it: no unknown
    members, required members present, types, enums, list bounds, patterns and lengths (not of FREE_TEXT)."""
    errors: list[str] = []
    _check(payload, shape_name, "", service, errors, response=True)
    if errors:
        raise ValueError(f"{shape_name}: " + "; ".join(errors))


def parse_query(args: dict[str, str], shape_name: str, service: str = CONTROL) -> dict[str, Any]:
    """Query-string members of `shape_name`, converted to the types their shapes declare."""
    members = shapes(service)[shape_name].get("members", {})
    out: dict[str, Any] = {}
    for name, member in members.items():
        if member.get("location") != "querystring":
            continue
        raw = args.get(member.get("locationName", name))
        if raw is None:
            continue
        kind = shapes(service)[member["shape"]]["type"]
        try:
            if kind in ("integer", "long"):
                out[name] = int(raw)
            elif kind == "timestamp":
                out[name] = parse_time(raw)
            else:
                out[name] = raw
        except ValueError:
            raise ApiError(
                "ValidationException",
                _validation_message([f"Value '{raw}' at '{name}' could not be parsed"]),
                service,
            ) from None
    return out


def parse_time(raw: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(ts: datetime | None) -> str | None:
    """rest-json's iso8601 timestamp format."""
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
