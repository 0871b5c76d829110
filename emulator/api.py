"""Bedrock over HTTP: the control-plane and runtime operations as rest-json, as boto3 expects them.

Requests are validated against botocore's shapes, failures are returned with the error code and HTTP
status of the error's shape, and every call is recorded (operation, job, token, status) so tests can
assert exactly-once submission.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from emulator.catalog import catalog
from emulator.families import Family
from emulator.jobs import JobEngine
from emulator.records import invoke_one
from emulator.service_model import CONTROL, RUNTIME, ApiError, iso, parse_query, validate
from emulator.structured import Breakage

JOB_PATH = re.compile(r"^/model-invocation-job/(?P<ident>.+?)(?P<stop>/stop)?$")
MODEL_PATH = re.compile(
    r"^/model/(?P<model>.+)/(?P<op>invoke|converse|invoke-with-response-stream|converse-stream)$"
)
FOUNDATION_MODEL_PATH = re.compile(r"^/foundation-models/(?P<ident>.+)$")
PROFILE_PATH = re.compile(r"^/inference-profiles/(?P<ident>.+)$")
BEDROCK_PATH = re.compile(
    r"^/(model-invocation-jobs?(/.*)?|model/.+/(invoke|converse)[-a-z]*|foundation-models(/.+)?|inference-profiles(/.+)?)$"
)
REQUEST_ID = "x-amzn-RequestId"
STREAMING = {
    "invoke-with-response-stream": "InvokeModelWithResponseStream",
    "converse-stream": "ConverseStream",
}


def _json(payload: Any, status: int = 200, content_type: str = "application/json") -> Response:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Response(body, status=status, content_type=content_type)


def signing_region(environ: dict[str, Any], default: str) -> str:
    """The region in `Credential=AKID/date/region/service/aws4_request`, else `default` (unsigned)."""
    try:
        return environ["HTTP_AUTHORIZATION"].split("Credential=", 1)[1].split(",", 1)[0].split("/")[2]
    except (KeyError, IndexError):
        return default


def error_response(error: ApiError) -> Response:
    response = _json({"message": error.message}, status=error.status)
    response.headers["x-amzn-ErrorType"] = error.code
    return response


class CallLog:
    """Every Bedrock call with its outcome, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._calls.append(entry)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()


class BedrockApi:
    """WSGI app for the Bedrock paths; routing to it is the server's business."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self.calls = CallLog()
        catalog()  # load and check models.json now: a bad line fails at start, not in a client
        self._rng_lock = threading.Lock()
        self._rngs: dict[str, random.Random] = {}
        self._asked: dict[str, int] = {}

    def reset_throttling(self) -> None:
        """Restart the seeded streams (throttling draws, the count of times each body was invoked)."""
        with self._rng_lock:
            self._rngs.clear()
            self._asked.clear()

    def _breakage(self, body: bytes) -> Breakage | None:
        """The n-th invocation of the same body draws its structured answer's breakage as the n-th: seeded
        and independent of what runs concurrently, yet a retry of an invalid answer may come back valid."""
        rate = self.engine.profile.invalid_output_rate
        if rate <= 0:
            return None
        digest = hashlib.sha256(body).hexdigest()[:24]
        with self._rng_lock:
            n = self._asked.get(digest, 0)
            self._asked[digest] = n + 1
        return Breakage(rate, self.engine.profile.seed, f"invoke:{digest}:{n}")

    def _throttled(self, operation: str) -> bool:
        profile = self.engine.profile
        rate = profile.throttle_for(operation)
        if rate <= 0:
            return False
        with self._rng_lock:
            rng = self._rngs.setdefault(operation, random.Random(f"{profile.seed}:{operation}"))
            return rng.random() < rate

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        operation, handler, args = self._route(request)
        entry: dict[str, Any] = {
            "operation": operation,
            "jobName": None,
            "clientRequestToken": None,
            "jobArn": None,
            "modelId": None,
        }
        try:
            if operation and self._throttled(operation):
                raise ApiError(
                    "ThrottlingException",
                    "Too many requests, please wait before trying again.",
                    RUNTIME if operation in ("InvokeModel", "Converse") else CONTROL,
                )
            response = handler(request, entry, *args)
        except ApiError as exc:
            response = error_response(exc)
        # Every Bedrock response carries a request id, as AWS's do; SDKs put it in their response metadata.
        response.headers[REQUEST_ID] = str(uuid.uuid4())
        entry["status_code"] = response.status_code
        entry["time"] = iso(datetime.now(UTC))
        if operation:
            self.calls.add(entry)
        return response(environ, start_response)

    def _route(self, request: Request) -> tuple[str, Any, tuple[Any, ...]]:
        path, method = request.path, request.method
        if path == "/model-invocation-job" and method == "POST":
            return "CreateModelInvocationJob", self.create, ()
        if path == "/model-invocation-jobs" and method == "GET":
            return "ListModelInvocationJobs", self.list, ()
        if match := JOB_PATH.match(path):
            if match["stop"] and method == "POST":
                return "StopModelInvocationJob", self.stop, (match["ident"],)
            if not match["stop"] and method == "GET":
                return "GetModelInvocationJob", self.get, (match["ident"],)
        if method == "GET" and path == "/foundation-models":
            return "ListFoundationModels", self.list_models, ()
        if method == "GET" and (match := FOUNDATION_MODEL_PATH.match(path)):
            return "GetFoundationModel", self.get_model, (match["ident"],)
        if method == "GET" and path == "/inference-profiles":
            return "ListInferenceProfiles", self.list_profiles, ()
        if method == "GET" and (match := PROFILE_PATH.match(path)):
            return "GetInferenceProfile", self.get_profile, (match["ident"],)
        if (match := MODEL_PATH.match(path)) and method == "POST":
            if match["op"] in STREAMING:
                return STREAMING[match["op"]], self.streaming, (match["model"],)
            return (
                ("InvokeModel", self.invoke, (match["model"],))
                if match["op"] == "invoke"
                else ("Converse", self.converse, (match["model"],))
            )
        return "", self.unknown, ()

    # ---------------------------------------------------------------------------------- control plane
    def create(self, request: Request, entry: dict[str, Any]) -> Response:
        body = _body(request)
        entry.update(
            jobName=body.get("jobName"),
            clientRequestToken=body.get("clientRequestToken"),
            modelId=body.get("modelId"),
        )
        validate(body, "CreateModelInvocationJobRequest")
        _, family = catalog().require(
            body["modelId"], self._region(request), self.engine.profile.extra_models,
            body.get("modelInvocationType") or "InvokeModel", CONTROL,
        )  # fmt: skip
        job = self.engine.create(body, family)
        entry["jobArn"] = job.arn
        return _json({"jobArn": job.arn})

    def get(self, request: Request, entry: dict[str, Any], ident: str) -> Response:
        job = self._find(ident, entry)
        return _json(job.describe())

    def stop(self, request: Request, entry: dict[str, Any], ident: str) -> Response:
        self._find(ident, entry)
        self.engine.stop(ident)
        return _json({})

    def _find(self, ident: str, entry: dict[str, Any]) -> Any:
        validate({"jobIdentifier": ident}, "StopModelInvocationJobRequest")
        job = self.engine.find(ident)
        entry.update(
            jobName=job.name,
            jobArn=job.arn,
            modelId=job.model_id,
            clientRequestToken=job.request.get("clientRequestToken"),
        )
        return job

    def list(self, request: Request, entry: dict[str, Any]) -> Response:
        query = parse_query(dict(request.args), "ListModelInvocationJobsRequest")
        validate(query, "ListModelInvocationJobsRequest")
        entry["jobName"] = query.get("nameContains")
        jobs = self.engine.list(
            status=query.get("statusEquals"),
            name_contains=query.get("nameContains"),
            after=query.get("submitTimeAfter"),
            before=query.get("submitTimeBefore"),
            descending=query.get("sortOrder", "Descending") == "Descending",
        )
        start = _decode_token(query.get("nextToken"))
        size = query.get("maxResults", 1000)
        page = jobs[start : start + size]
        out: dict[str, Any] = {"invocationJobSummaries": [j.describe() for j in page]}
        if start + size < len(jobs):
            out["nextToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return _json(out)

    def _region(self, request: Request) -> str:
        return signing_region(request.environ, self.engine.region)

    # ------------------------------------------------------------------------------------------ catalog
    def list_models(self, request: Request, entry: dict[str, Any]) -> Response:
        query = parse_query(dict(request.args), "ListFoundationModelsRequest")
        validate(query, "ListFoundationModelsRequest")
        return _json({"modelSummaries": catalog().list_models(self._region(request), query)})

    def get_model(self, request: Request, entry: dict[str, Any], ident: str) -> Response:
        entry["modelId"] = ident
        validate({"modelIdentifier": ident}, "GetFoundationModelRequest")
        return _json({"modelDetails": catalog().get_model(ident, self._region(request))})

    def list_profiles(self, request: Request, entry: dict[str, Any]) -> Response:
        query = parse_query(dict(request.args), "ListInferenceProfilesRequest")
        validate(query, "ListInferenceProfilesRequest")
        profiles = catalog().list_profiles(self._region(request), query.get("typeEquals"))
        start = _decode_token(query.get("nextToken"))
        size = query.get("maxResults", 1000)
        out: dict[str, Any] = {"inferenceProfileSummaries": profiles[start : start + size]}
        if start + size < len(profiles):
            out["nextToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return _json(out)

    def get_profile(self, request: Request, entry: dict[str, Any], ident: str) -> Response:
        entry["modelId"] = ident
        validate({"inferenceProfileIdentifier": ident}, "GetInferenceProfileRequest")
        return _json(catalog().get_profile(ident, self._region(request)))

    # ----------------------------------------------------------------------------------------- runtime
    def _family(
        self, request: Request, model: str, entry: dict[str, Any], invocation_type: str = "InvokeModel"
    ) -> Family:
        entry["modelId"] = model
        validate({"modelId": model, "body": b""}, "InvokeModelRequest", RUNTIME)
        _, family = catalog().require(
            model, self._region(request), self.engine.profile.extra_models, invocation_type, RUNTIME
        )
        return family

    def invoke(self, request: Request, entry: dict[str, Any], model: str) -> Response:
        family = self._family(request, model, entry)
        body = request.get_data()
        try:
            if not isinstance(orjson.loads(body), dict):
                raise ValueError
        except ValueError:
            raise ApiError(
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
                RUNTIME,
            ) from None
        row = invoke_one(family, model, body, self._breakage(body))
        if row["output"] is None:
            raise ApiError("ValidationException", str(row["error_message"]), RUNTIME)
        return _json(str(row["output"]).encode())

    def converse(self, request: Request, entry: dict[str, Any], model: str) -> Response:
        family = self._family(request, model, entry, "Converse")
        body = _body(request, RUNTIME)
        validate({**body, "modelId": model}, "ConverseRequest", RUNTIME)
        model_input = {k: body[k] for k in ("messages", "system", "inferenceConfig", "toolConfig") if k in body}
        encoded = orjson.dumps(model_input)
        row = invoke_one(family, model, encoded, self._breakage(encoded))
        if row["output"] is None:
            raise ApiError("ValidationException", str(row["error_message"]), RUNTIME)
        return _json({**orjson.loads(str(row["output"])), "metrics": {"latencyMs": 1}})

    def streaming(self, request: Request, entry: dict[str, Any], model: str) -> Response:
        entry["modelId"] = model
        raise ApiError(
            "ValidationException",
            "The Bedrock emulator does not implement streaming responses; use InvokeModel or Converse.",
            RUNTIME,
        )

    def unknown(self, request: Request, entry: dict[str, Any]) -> Response:
        raise ApiError("ValidationException", f"Unknown operation {request.method} {request.path}")


def _body(request: Request, service: str = CONTROL) -> dict[str, Any]:
    try:
        body = orjson.loads(request.get_data() or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError("ValidationException", "The request body is not valid JSON.", service) from None
    if not isinstance(body, dict):
        raise ApiError("ValidationException", "The request body must be a JSON object.", service)
    return body


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError:
        raise ApiError("ValidationException", "The nextToken is not valid.") from None

