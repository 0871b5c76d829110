"""The emulator's HTTP server: Hypercorn serving the one-port WSGI app over HTTP/1.1 and cleartext HTTP/2
(h2c) on the same socket, in a background thread with its own event loop.

Hypercorn tells the protocols apart by itself: an HTTP/1.1 request, an HTTP/1.1 request with
`Upgrade: h2c` (switched to HTTP/2 when it has no body), or the HTTP/2 connection preface sent at once
("prior knowledge", as the AWS SDK for JavaScript v3 does against an `http://` endpoint).

The WSGI app runs on a thread pool, as it did under werkzeug's threaded server: a request body is read
in full first, then the app is called with it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypercorn.app_wrappers import WSGIWrapper
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]

# S3 single-part uploads go up to 5 GB; Hypercorn's 16 MiB default would turn larger bodies into 400s.
MAX_BODY_BYTES = 5 * 1024**3
APP_THREADS = 64
BACKLOG = 1024


def _content_length(app: WsgiApp) -> WsgiApp:
    """The body is fully buffered before the app runs; say how long it is when the client did not
    (HTTP/2 requests and chunked HTTP/1.1 uploads may carry no content-length), so that werkzeug and moto
    read it."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("CONTENT_LENGTH"):
            size = environ["wsgi.input"].getbuffer().nbytes
            if size:
                environ["CONTENT_LENGTH"] = str(size)
        return app(environ, start_response)

    return wrapped


class _Wsgi(WSGIWrapper):
    """Hypercorn's WSGI adapter, except that a response with an empty body (a HEAD, a 204, moto's empty
    200s) still sends its status and headers: Hypercorn's own sends them with the first body chunk only."""

    def run_app(self, environ: dict[str, Any], send: Callable[[dict[str, Any]], Any]) -> None:
        started: list[tuple[int, list[tuple[bytes, bytes]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            started[:] = [(int(status.split(" ", 1)[0]), encoded)]

        body = self.app(environ, start_response)
        sent = False
        try:
            for chunk in body:
                if not chunk:
                    continue
                if not sent:
                    sent = _send_start(send, started)
                send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not sent:
                _send_start(send, started)
        finally:
            if hasattr(body, "close"):
                body.close()


def _send_start(send: Callable[[dict[str, Any]], Any], started: list[tuple[int, Any]]) -> bool:
    if not started:
        raise RuntimeError("WSGI app did not call start_response")
    status, headers = started[0]
    send({"type": "http.response.start", "status": status, "headers": headers})
    return True


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A connection still open when the graceful timeout ends is cancelled; that is not an error."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


class HttpServer:
    """Listens as soon as it is built (connections queue until `start()`); `stop()` closes it."""

    def __init__(self, host: str, port: int, app: WsgiApp, name: str = "bedrock-emulator") -> None:
        self._socket = _bind(host, port)
        self.server_address = self._socket.getsockname()[:2]
        config = Config()
        config.keep_alive_timeout = 3600  # like werkzeug: an idle pooled client connection is never cut
        config.keep_alive_max_requests = 2**31
        config.graceful_timeout = 1
        config.include_server_header = False
        config.wsgi_max_body_size = MAX_BODY_BYTES
        config.accesslog = None
        errors = logging.getLogger("emulator.http")
        errors.setLevel(logging.WARNING)  # app errors still show; Hypercorn's "Running on" banner does not
        config.errorlog = errors
        self._config = config
        self._app = _Wsgi(_content_length(app), MAX_BODY_BYTES)
        self._loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(APP_THREADS, thread_name_prefix=f"{name}-app")
        self._loop.set_default_executor(self._executor)
        self._loop.set_exception_handler(_quiet_cancellation)
        self._shutdown = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(
                worker_serve(
                    self._app,
                    self._config,
                    sockets=Sockets(secure_sockets=[], insecure_sockets=[self._socket], quic_sockets=[]),
                    shutdown_trigger=self._shutdown.wait,
                )
            )
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self._executor.shutdown(wait=False, cancel_futures=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shutdown.set)
            self._thread.join(timeout=10)
        self._socket.close()
