"""HTTP/1.1 and cleartext HTTP/2 (h2c) on the one port: prior knowledge, as the AWS SDK for JavaScript v3
uses against an http:// endpoint, the `Upgrade: h2c` handshake, and plain HTTP/1.1 beside them."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import httpx

from emulator.service_model import check_response

CLAUDE_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "over h2"}]}],
}


def _h2(emulator) -> httpx.Client:
    """HTTP/2 only, over cleartext: httpx then starts with the connection preface (prior knowledge)."""
    return httpx.Client(base_url=emulator.url, http1=False, http2=True, timeout=10)


def test_prior_knowledge_h2c_serves_bedrock(emulator):
    with _h2(emulator) as client:
        models = client.get("/foundation-models", params={"byOutputModality": "EMBEDDING"})
        assert (models.http_version, models.status_code) == ("HTTP/2", 200)
        check_response(models.json(), "ListFoundationModelsResponse")
        assert "amazon.titan-embed-text-v2:0" in {m["modelId"] for m in models.json()["modelSummaries"]}
        assert uuid.UUID(models.headers["x-amzn-requestid"])

        reply = client.post(
            "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke",
            content=json.dumps(CLAUDE_BODY),
            headers={"content-type": "application/json"},
        )
        assert (reply.http_version, reply.status_code) == ("HTTP/2", 200)
        assert reply.json()["content"][0]["text"] == "Emulated reply to: over h2"

        refused = client.post("/model/acme.gpt-9000-v1:0/invoke", content=b"{}")
        assert (refused.http_version, refused.status_code) == ("HTTP/2", 400)
        assert refused.headers["x-amzn-errortype"] == "ValidationException"
        assert refused.json() == {"message": "The provided model identifier is invalid."}
        assert uuid.UUID(refused.headers["x-amzn-requestid"])

        stats = client.get("/_emulator/stats")
        assert (stats.http_version, stats.status_code) == ("HTTP/2", 200) and "jobs" in stats.json()


def test_concurrent_streams_on_one_h2_connection(emulator):
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=emulator.url, http1=False, http2=True, timeout=10) as client:
            await client.get("/_emulator/stats")  # one connection, then 32 streams on it at once

            def converse(i: int) -> Any:
                body = {"messages": [{"role": "user", "content": [{"text": f"stream {i}"}]}]}
                return client.post("/model/us.amazon.nova-lite-v1:0/converse", json=body)

            return await asyncio.gather(*(converse(i) for i in range(32)))

    replies = asyncio.run(run())
    assert {r.http_version for r in replies} == {"HTTP/2"}
    assert [r.json()["output"]["message"]["content"][0]["text"] for r in replies] == [
        f"Emulated reply to: stream {i}" for i in range(32)
    ]


def test_upgrade_to_h2c(emulator):
    """An HTTP/1.1 request with `Upgrade: h2c` is answered `101 Switching Protocols`, then over HTTP/2."""
    url = urlsplit(emulator.url)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = connection.initiate_upgrade_connection()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"GET /foundation-models/amazon.nova-micro-v1:0 HTTP/1.1\r\n"
            + f"Host: {url.netloc}\r\n".encode()
            + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
            + settings
            + b"\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(connection.data_to_send())
        headers: dict[bytes, bytes] = {}
        body = b""
        ended = False
        events = connection.receive_data(rest) if rest else []
        while True:
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                    ended = True
            sock.sendall(connection.data_to_send())
            if ended:
                break
            events = connection.receive_data(sock.recv(65536))
    assert headers[b":status"] == b"200" and uuid.UUID(headers[b"x-amzn-requestid"].decode())
    details = json.loads(body)
    check_response(details, "GetFoundationModelResponse")
    assert details["modelDetails"]["modelName"] == "Nova Micro"


def test_http1_still_answers_on_the_same_port(emulator):
    with httpx.Client(base_url=emulator.url) as client:
        response = client.get("/inference-profiles", params={"maxResults": 2})
    assert (response.http_version, response.status_code) == ("HTTP/1.1", 200)
    assert len(response.json()["inferenceProfileSummaries"]) == 2 and response.json()["nextToken"]


def test_large_s3_bodies_pass_through(s3, bucket):
    """A body past Hypercorn's 16 MiB limit on buffered WSGI bodies goes through: bodies are streamed."""
    payload = uuid.uuid4().bytes * (17 * 2**20 // 16)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=payload)
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == payload
    assert s3.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == len(payload)


def test_bodies_without_a_length_stream_through(emulator, s3, bucket):
    """An HTTP/2 upload sent as DATA frames without content-length, and a chunked HTTP/1.1 upload."""
    payload = uuid.uuid4().bytes * (3 * 2**20 // 16)

    def pieces():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    with _h2(emulator) as client:
        h2_put = client.put(f"/{bucket}/h2.bin", content=pieces())
    with httpx.Client(base_url=emulator.url) as client:
        chunked = client.put(f"/{bucket}/chunked.bin", content=pieces())
    assert (h2_put.http_version, h2_put.status_code) == ("HTTP/2", 200)
    assert "content-length" not in h2_put.request.headers
    assert (chunked.http_version, chunked.status_code, chunked.request.headers["transfer-encoding"]) == (
        "HTTP/1.1", 200, "chunked"
    )  # fmt: skip
    for key in ("h2.bin", "chunked.bin"):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
