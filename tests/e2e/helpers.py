"""Helpers shared by the end-to-end tests: read a run's output, check the emulator's call record.

Plain functions, no fixtures: import them (`from tests.e2e.helpers import ...`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import polars as pl

T = TypeVar("T")

CREATE = "CreateModelInvocationJob"
GET = "GetModelInvocationJob"


def joke_answer(topic: pl.Expr) -> dict[str, pl.Expr]:
    """What the emulator answers to `joke_about_topic` for a row (emulator/README.md documents it): the
    reply, and its token counts (UTF-8 bytes / 4, rounded up)."""
    prompt = pl.concat_str([pl.lit("Tell me a joke about "), topic, pl.lit(" in less than 50 words.")])
    reply = pl.concat_str([pl.lit("Emulated reply to: "), prompt])
    return {"response": reply, "input_tokens": (prompt.str.len_bytes() + 3) // 4,
            "output_tokens": (reply.str.len_bytes() + 3) // 4, "stop_reason": pl.lit("end_turn")}


def read_output(results_uri: str, aws: Any = None) -> pl.DataFrame:
    """A run's output: the result parts its `results/manifest.json` lists, as one frame."""
    from tasks.aws import storage_options
    from tasks.core.collect import result_part_uris

    return pl.read_parquet(result_part_uris(results_uri, aws), storage_options=storage_options(aws))


def paid_requests(calls: Iterable[dict[str, Any]], aws: Any = None) -> int:
    """Requests Bedrock was paid for in these calls: the records of every job it accepted (each ARN once)
    plus every successful on-demand InvokeModel / Converse call."""
    from tasks.aws import client

    bedrock = client("bedrock", aws)
    arns = {c["jobArn"] for c in calls if c.get("operation") == CREATE and c.get("status_code") == 200}
    records = sum(bedrock.get_model_invocation_job(jobIdentifier=arn).get("totalRecordCount") or 0
                  for arn in arns)
    return records + sum(1 for c in calls if c.get("operation") in ("InvokeModel", "Converse")
                         and c.get("status_code") == 200)


def created_jobs(calls: Iterable[dict[str, Any]], name_contains: str = "") -> dict[str, set[str]]:
    """Job name -> the distinct ARNs Bedrock answered a successful Create with.

    A Create retried with the same `clientRequestToken` gets the same ARN back: one job, not two.
    """
    arns: dict[str, set[str]] = {}
    for call in calls:
        if call.get("operation") == CREATE and call.get("status_code") == 200 and name_contains in call["jobName"]:
            arns.setdefault(call["jobName"], set()).add(call["jobArn"])
    return arns


def created_job_names(calls: Iterable[dict[str, Any]], name_contains: str = "") -> Counter[str]:
    """Jobs Bedrock accepted, by name: the count is the number of distinct jobs under that name."""
    return Counter({name: len(arns) for name, arns in created_jobs(calls, name_contains).items()})


def ledger_jobs(run_uri: str, aws: Any) -> dict[str, tuple[str, int]]:
    """Every job the run's ledgers (main shards and repair rounds) recorded: name -> (ledger key, attempt)."""
    from tasks.aws import client, split_s3_uri

    s3 = client("s3", aws)
    bucket, prefix = split_s3_uri(run_uri.rstrip("/") + "/")
    found: dict[str, tuple[str, int]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/ledger/" not in key or not key.endswith(".json"):
                continue
            ledger = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for entry in ledger["entries"]:
                assert entry["job_name"] not in found, f"{entry['job_name']} is in two ledger entries"
                found[entry["job_name"]] = (key[len(prefix):], entry["attempt"])
    return found


def assert_submitted_once(calls: Iterable[dict[str, Any]], run_uri: str, run_key: str, aws: Any) -> dict[str, set[str]]:
    """No (shard, attempt) became two jobs: each job name has one ARN, and the jobs Bedrock accepted for
    this run are exactly the ones its ledgers record, one ledger entry each."""
    jobs = created_jobs(calls, f"-{run_key[:8]}-")
    twice = {name: arns for name, arns in jobs.items() if len(arns) > 1}
    assert not twice, f"submitted twice: {twice}"
    recorded = ledger_jobs(run_uri, aws)
    assert set(jobs) == set(recorded), (
        f"jobs without a ledger entry: {sorted(set(jobs) - set(recorded))}; "
        f"ledger entries Bedrock never accepted: {sorted(set(recorded) - set(jobs))}"
    )
    return jobs


def assert_every_row_once(output: pl.DataFrame, record_ids: Iterable[str]) -> None:
    """The output has exactly one row per input row, and a row has a result or a named error."""
    expected = sorted(record_ids)
    assert output.height == len(expected), f"{output.height} output rows for {len(expected)} input rows"
    assert output["record_id"].n_unique() == output.height, "a record_id appears twice in the output"
    assert sorted(output["record_id"].to_list()) == expected
    value = "embedding" if "embedding" in output.columns else "response"
    neither = output.filter(pl.col(value).is_null() & pl.col("error_code").is_null())
    assert neither.is_empty(), f"{neither.height} row(s) have neither a result nor an error_code"


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        pause.wait(every)


def flow_run_logs(flow_run_id: Any) -> list[str]:
    """The messages the run (and its tasks) sent to the Prefect API, as the UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
        out = [log.message for log in logs]
        while len(logs) == 200:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200, offset=len(out))
            out += [log.message for log in logs]
    return out


class TcpProxy:
    """A loopback TCP forwarder in front of an endpoint, which can be taken down on purpose: while down,
    connections are refused and open ones are cut, as a client sees an outage of the endpoint."""

    def __init__(self, target: str) -> None:
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._open: set[Any] = set()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: Any = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = list(self._open), set()
        # shutdown(), not only close(): on Linux, close() from another thread neither wakes a thread blocked
        # in accept() or recv() nor ends the connection, so kept-alive connections would outlive the outage.
        for sock in ([listener] if listener is not None else []) + conns:
            _cut(sock)

    def _accept(self, listener: Any) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut down: down()
            upstream = socket.create_connection(self._target)
            with self._lock:
                current = self._listener is listener  # else down() came between accept() and here
                if current:
                    self._open.update((client, upstream))
            if not current:
                _cut(client)
                _cut(upstream)
                return
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass


def _cut(sock: Any) -> None:
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected (a listener on some systems), or already cut
        pass
    sock.close()
