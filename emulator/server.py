"""One endpoint for everything, like LocalStack's edge port: Bedrock (control plane and runtime) is served
here, every other AWS service by moto's server app, routed by the SigV4 credential scope and the path.

`start()` runs it in background threads of the current process (tests, the flow's local mode);
`python -m emulator` runs the same server in the foreground.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import boto3
import orjson
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from emulator.api import BEDROCK_PATH, BedrockApi
from emulator.jobs import JobEngine
from emulator.metrics import MetricsPublisher
from emulator.profile import Profile, load_profile

REGION = "us-east-1"
DUMMY_KEY = "testing"
BEDROCK_SIGNING_NAMES = {"bedrock", "bedrock-runtime"}


def _signing_service(environ: dict[str, Any]) -> str | None:
    """The service in `Credential=AKID/date/region/service/aws4_request`, or None for unsigned requests."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        return auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")[3]
    except IndexError:
        return None


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class EmulatorServer:
    """The running endpoint. Use `start()` to create one."""

    region = REGION

    def __init__(self, host: str = "127.0.0.1", port: int = 0, profile: Any = None) -> None:
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer = make_server(
            host, port, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.host, self.port = self._server.server_address[:2]
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self.engine = JobEngine(load_profile(profile), lambda: self.client("s3"), REGION)
        self.api = BedrockApi(self.engine)
        self._metrics = MetricsPublisher(self.engine, lambda: self.client("cloudwatch"))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bedrock-emulator", daemon=True
        )

    # --------------------------------------------------------------------------------------- lifecycle
    def start(self) -> EmulatorServer:
        self._thread.start()
        self._metrics.start()
        return self

    def stop(self) -> None:
        self.engine.reset()
        self._metrics.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

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
                    config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=32),
                )
            return self._clients[service]

    def calls(self) -> list[dict[str, Any]]:
        return self.api.calls.all()

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    @property
    def profile(self) -> Profile:
        return self.engine.profile

    def set_profile(self, profile: Any) -> None:
        """Replace the knobs (a Profile, dict, JSON text or path; None = env or defaults).

        Jobs already past a draw keep their fate; later phases use the new timings.
        """
        self.engine.set_profile(load_profile(profile))
        self.api.reset_throttling()

    def reset(self) -> None:
        """Forget jobs, the call log and stats; S3 data (moto) stays."""
        self.engine.reset()
        self.api.calls.clear()
        self.api.reset_throttling()

    # ----------------------------------------------------------------------------------------- routing
    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self._admin(Request(environ))(environ, start_response)
        service = _signing_service(environ)
        if (service is None or service in BEDROCK_SIGNING_NAMES) and BEDROCK_PATH.match(path):
            return self.api(environ, start_response)
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
