"""One endpoint for everything, like LocalStack's edge port: Bedrock (control plane and runtime) is served
here, every other AWS service by moto's server app, routed by the SigV4 credential scope and the path.

`start()` runs it in background threads of the current process (tests, the flow's local mode);
`python -m emulator` runs the same server in the foreground.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from typing import Any

import boto3
import orjson
from botocore.config import Config
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import s3_backends
from werkzeug.wrappers import Request, Response

from emulator.api import BEDROCK_PATH, BedrockApi
from emulator.jobs import JobEngine
from emulator.metrics import MetricsPublisher
from emulator.profile import Profile, load_profile
from emulator.serving import HttpServer
from emulator.storage import MotoStore, S3Store

REGION = "us-east-1"
DUMMY_KEY = "testing"
BEDROCK_SIGNING_NAMES = {"bedrock", "bedrock-runtime"}
# The emulator's own S3 client (job input and output) says so in its User-Agent: `s3_error_rate` spares
# it, as Bedrock's internal S3 access is not what a client's fault test is about.
INTERNAL_AGENT = "bedrock-emulator-internal"
S3_ERRORS = (
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "SlowDown", "Please reduce your request rate."),
)


def _signing_service(environ: dict[str, Any]) -> str | None:
    """The service in `Credential=AKID/date/region/service/aws4_request`, or None for unsigned requests."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        return auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")[3]
    except IndexError:
        return None


class EmulatorServer:
    """The running endpoint. Use `start()` to create one."""

    region = REGION

    def __init__(self, host: str = "127.0.0.1", port: int = 0, profile: Any = None) -> None:
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = HttpServer(host, port, self._app)
        self.host, self.port = self._server.server_address
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        store = MotoStore(lambda: s3_backends[DEFAULT_ACCOUNT_ID]["aws"], S3Store(lambda: self.client("s3")))
        self.engine = JobEngine(load_profile(profile), store, REGION)
        self.api = BedrockApi(self.engine)
        self._metrics = MetricsPublisher(self.engine, lambda: self.client("cloudwatch"))
        self._s3_lock = threading.Lock()
        self._s3_rng = random.Random()
        self._s3_errors: dict[str, int] = {}
        self._reset_s3_faults()

    # --------------------------------------------------------------------------------------- lifecycle
    def start(self) -> EmulatorServer:
        self._server.start()
        self._metrics.start()
        return self

    def stop(self) -> None:
        self.engine.reset()
        self._metrics.stop()
        self._server.stop()

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Everything a client (boto3, Polars' object_store, the AWS CLI) needs to use this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self, service: str) -> Any:
        """A boto3 client for this endpoint (dummy credentials), built once per service and shared:
        clients are thread-safe and slow to build."""
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = boto3.session.Session().client(
                    service,
                    endpoint_url=self.url,
                    region_name=REGION,
                    aws_access_key_id=DUMMY_KEY,
                    aws_secret_access_key=DUMMY_KEY,
                    config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=32,
                                  user_agent_extra=INTERNAL_AGENT),
                )
            return self._clients[service]

    def calls(self) -> list[dict[str, Any]]:
        return self.api.calls.all()

    def stats(self) -> dict[str, Any]:
        with self._s3_lock:
            s3_errors = dict(self._s3_errors)
        return {**self.engine.stats(), "s3_errors": s3_errors}

    @property
    def profile(self) -> Profile:
        return self.engine.profile

    def set_profile(self, profile: Any) -> None:
        """Replace the knobs (a Profile, dict, JSON text or path; None = env or defaults).

        Jobs already past a draw keep their fate; later phases use the new timings.
        """
        self.engine.set_profile(load_profile(profile))
        self.api.reset_throttling()
        self._reset_s3_faults()

    def reset(self) -> None:
        """Forget jobs, the call log and stats; S3 data (moto) stays."""
        self.engine.reset()
        self.api.calls.clear()
        self.api.reset_throttling()
        self._reset_s3_faults()

    # -------------------------------------------------------------------------------------- S3 faults
    def _reset_s3_faults(self) -> None:
        with self._s3_lock:
            self._s3_rng = random.Random(f"{self.engine.profile.seed}:s3")
            self._s3_errors = {}

    def _s3_fault(self, environ: dict[str, Any]) -> Response | None:
        """A seeded 500 InternalError / 503 SlowDown for a client's S3 request, at `s3_error_rate`."""
        rate = self.engine.profile.s3_error_rate
        if rate <= 0 or INTERNAL_AGENT in environ.get("HTTP_USER_AGENT", ""):
            return None
        with self._s3_lock:
            if self._s3_rng.random() >= rate:
                return None
            status, code, message = S3_ERRORS[self._s3_rng.random() < 0.5]
            self._s3_errors[code] = self._s3_errors.get(code, 0) + 1
        Request(environ).get_data()  # read the body, so the connection stays usable
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>emulated-s3-fault</RequestId></Error>"
        )
        return Response(body, status, content_type="application/xml")

    # ----------------------------------------------------------------------------------------- routing
    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self._admin(Request(environ))(environ, start_response)
        service = _signing_service(environ)
        if (service is None or service in BEDROCK_SIGNING_NAMES) and BEDROCK_PATH.match(path):
            return self.api(environ, start_response)
        if service == "s3" and (fault := self._s3_fault(environ)) is not None:
            return fault(environ, start_response)
        return self._moto(environ, start_response)

    def _admin(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/_emulator/calls"):
            payload: Any = self.calls()
        elif route == ("GET", "/_emulator/stats"):
            payload = self.stats()
        elif route == ("GET", "/_emulator/profile"):
            payload = self.profile.to_dict()
        elif route == ("POST", "/_emulator/profile"):
            try:
                self.set_profile(orjson.loads(request.get_data() or b"{}"))
            except (ValueError, TypeError) as exc:
                return Response(orjson.dumps({"message": str(exc)}), 400, content_type="application/json")
            payload = self.profile.to_dict()
        elif route == ("POST", "/_emulator/reset"):
            self.reset()
            payload = {"reset": True}
        else:
            return Response(
                orjson.dumps({"message": "unknown emulator endpoint"}), 404, content_type="application/json"
            )
        return Response(orjson.dumps(payload), content_type="application/json")


def start(host: str = "127.0.0.1", port: int = 0, profile: Any = None) -> EmulatorServer:
    """Start the endpoint in background threads; returns once it accepts connections.

    `profile` may be a Profile, a dict, JSON text or a path; None reads BEDROCK_EMULATOR_PROFILE, else
    defaults.
    """
    return EmulatorServer(host, port, profile).start()
