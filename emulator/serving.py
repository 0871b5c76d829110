"""The emulator's HTTP server: Hypercorn serving the one-port WSGI app over HTTP/1.1 and cleartext HTTP/2
(h2c) on the same socket, in a background thread with its own event loop.

Hypercorn tells the protocols apart by itself: an HTTP/1.1 request, an HTTP/1.1 request with
`Upgrade: h2c` (switched to HTTP/2 when it has no body), or the HTTP/2 connection preface sent at once
("prior knowledge", as the AWS SDK for JavaScript v3 does against an `http://` endpoint).

The WSGI app runs on a thread pool, as it did under werkzeug's threaded server, and reads a request body as
it arrives.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from hypercorn.app_wrappers import InvalidPathError, WSGIWrapper, _build_environ
from hypercorn.asyncio import tcp_server
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]

# Bodies are streamed to the app (`_Input`), so Hypercorn's limit on buffered WSGI bodies (16 MiB by
# default) does not apply; S3's own single-part limit is 5 GB.
MAX_BODY_BYTES = 5 * 1024**3
APP_THREADS = 64
# Hypercorn takes 64 KiB at a time from a connection's buffer, and each piece of a body then travels
# through h11, a queue and a thread hop: larger pieces make S3 uploads cheaper. It is a module constant of
# Hypercorn, read on each call; this process's only Hypercorn server is the emulator's.
READ_BYTES = 2**20
tcp_server.MAX_RECV = max(tcp_server.MAX_RECV, READ_BYTES)
BACKLOG = 1024


class _Input(io.RawIOBase):
    """`wsgi.input` for a body still arriving: each read takes the next chunk from the event loop, so the
    app reads the body as it comes (as under werkzeug's server) instead of after a full extra copy."""

    def __init__(self, first: bytes, pull: Callable[[], dict[str, Any]]) -> None:
        self._chunk = memoryview(first)
        self._pull = pull
        self.ended = False

    def readable(self) -> bool:
        return True

    def next_message(self) -> dict[str, Any]:
        message = self._pull()
        if message["type"] != "http.request" or not message.get("more_body"):
            self.ended = True
        return message

    def _fill(self) -> None:
        while not self._chunk and not self.ended:
            self._chunk = memoryview(self.next_message().get("body", b""))

    def readinto(self, buffer: Any) -> int:
        self._fill()
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._fill()
        out = self._chunk[:size].tobytes()
        self._chunk = self._chunk[len(out) :]
        return out

    def readall(self) -> bytes:
        # RawIOBase's own reads 8 KiB at a time into a growing buffer: slow for an S3 upload
        pieces = [self._chunk.tobytes()]
        while not self.ended:
            pieces.append(self.next_message().get("body", b""))
        self._chunk = memoryview(b"")
        return b"".join(pieces)


class _Wsgi(WSGIWrapper):
    """Hypercorn's WSGI adapter, except that
    - a body that does not come in one piece is streamed to the app (Hypercorn's reads it all first, then
      copies it, holding a large S3 upload twice); a body in one piece is given with its length, which HTTP/2
      clients need not send;
    - a response with an empty body (a HEAD, a 204, moto's empty 200s) still sends its status and headers:
      Hypercorn's own sends them with the first body chunk only."""

    async def handle_http(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Callable, call_soon: Callable
    ) -> None:
        first = await receive()
        body = first.get("body", b"")
        try:
            environ = _build_environ(scope, body)
        except InvalidPathError:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        stream = None
        if first.get("more_body"):
            stream = _Input(body, partial(call_soon, receive))
            environ["wsgi.input"] = stream
            environ["wsgi.input_terminated"] = True  # read to the end, whatever CONTENT_LENGTH says
        elif body and not environ.get("CONTENT_LENGTH"):
            environ["CONTENT_LENGTH"] = str(len(body))
        await sync_spawn(self.run_app, environ, partial(call_soon, send))
        while stream is not None and not stream.ended:  # a body the app left unread
            message = await receive()
            stream.ended = message["type"] != "http.request" or not message.get("more_body")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

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
        self._app = _Wsgi(app, MAX_BODY_BYTES)
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
