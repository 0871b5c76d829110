"""The `local` deployment of prefect.yaml, deployed and run the way an operator does it.

A real `prefect server start` (not the test harness), the process work pool, `prefect deploy -n local`,
a `prefect worker start` whose flow runs talk to the emulator, and `prefect deployment run ... --watch`.
Then the run's artifacts are read back through the API and the output Parquet from the emulator's S3.

`deployed_stack()` is also what `docs/make_screenshot.py` uses to produce the README's UI screenshots.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "bedrock-batch-process"
DEPLOYMENT = "bedrock-batch-inference/local"
SAMPLE = REPO / "samples" / "topics.csv"
ROLE_ARN = "arn:aws:iam::123456789012:role/BedrockBatchRole"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, what: str, timeout: float, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> Any:
    """Poll `check()` until it returns something truthy; fail with the log's tail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail(log)}")
        time.sleep(0.25)


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    """A running Prefect server + emulator + process worker, with `local` deployed."""

    tmp: Path
    port: int
    env: dict[str, str]  # for CLI calls and the worker: the server's API and the emulator's AWS settings
    emulator: Any
    bucket: str
    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str) -> None:
        """Record how long the stack took to get here (printed by the test: pytest -s shows it)."""
        self.timings.append((what, round(time.monotonic() - self.started, 1)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the Prefect CLI from the repository root against the stack's server."""
        done = subprocess.run([PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        handle = log.open("w")
        # Its own process group: stopping it also stops what it started (a worker's flow-run processes).
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        handle.close()
        self.procs.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return tail(self.tmp / f"{name}.log", 80)

    def run_deployment(self, params: dict[str, Any], timeout: float = 150) -> tuple[str, str]:
        """`prefect deployment run ... --watch`; returns (flow run id, CLI output)."""
        args = ["deployment", "run", DEPLOYMENT]
        for key, value in params.items():
            args += ["-p", f"{key}={value}"]
        try:
            done = self.prefect(*args, "--watch", "--watch-interval", "2", "--watch-timeout", str(int(timeout)),
                                timeout=timeout + 30)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"the run did not finish within {timeout:.0f} s\n{self.log('worker')}") from err
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
        assert found, done.stdout[-3000:]
        return found.group(1), done.stdout

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.emulator.url, region_name=self.emulator.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def deployed_stack(tmp: Path | None = None, keep: bool = False) -> Iterator[Stack]:
    """Server, emulator, work pool, `prefect deploy -n local`, worker; all stopped on exit."""
    from emulator import start

    own_tmp = tmp is None
    tmp = Path(tempfile.mkdtemp(prefix="bbf-deploy-")) if tmp is None else tmp
    port = free_port()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "PREFECT_")) and k not in ("BEDROCK_EMULATOR_PROFILE",)}
    prefect_env = {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    server_env = {
        **base, **prefect_env,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        # The UI asks the server where its API is: without these it would call the default port 4200.
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    emulator = start(host="127.0.0.1", port=0, profile=None)  # the default time scale
    stack = Stack(tmp=tmp, port=port, emulator=emulator, bucket=f"deploy-{uuid.uuid4().hex[:8]}",
                  env={**base, **prefect_env, **emulator.env(), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    try:
        server = stack.spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                             server_env)
        wait_until(lambda: _healthy(stack.api_url), "prefect server /api/health", 150, server,
                   tmp / "server.log")
        stack.mark("server healthy")
        stack.s3().create_bucket(Bucket=stack.bucket)

        stack.prefect("work-pool", "create", POOL, "--type", "process")
        stack.mark("work pool created")
        # The worker starts while `prefect deploy` runs: both take a while to import Prefect.
        # Poll for scheduled runs every 2 s, not the default 15 s.
        worker = stack.spawn("worker", [PREFECT, "worker", "start", "--pool", POOL],
                             {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "2"})
        stack.prefect("deploy", "-n", "local", "--no-prompt")
        stack.mark("deployed")
        wait_until(lambda: "started" in stack.log("worker").lower(), "worker start", 90, worker,
                   tmp / "worker.log")
        stack.mark("worker started")
        yield stack
    finally:
        for _, proc, _ in reversed(stack.procs):
            _stop(proc)
        emulator.stop()
        if own_tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_sample(stack: Stack) -> tuple[str, str]:
    """The deployment run the test and the screenshot script make: topics.csv through `joke_about_topic`."""
    return stack.run_deployment({
        "input_path": SAMPLE,
        "prompt_id": "joke_about_topic",
        "job_name_prefix": "deploy-test",
        "output_uri": f"s3://{stack.bucket}/deploy",
        "role_arn": ROLE_ARN,
        "poll_interval_s": 2,
    })


def read_run(api_url: str, flow_run_id: str) -> tuple[Any, list[Any], Any]:
    """(flow run, its artifacts, the deployment) through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    return run, artifacts, deployment


@pytest.mark.e2e
@pytest.mark.slow  # ~1 min: a real server, `prefect deploy`, a worker and its flow-run process
@pytest.mark.timeout(420)
def test_local_deployment_runs_on_a_process_worker(tmp_path: Path) -> None:
    import polars as pl

    with deployed_stack(tmp_path) as stack:
        flow_run_id, watched = run_sample(stack)
        stack.mark("run finished")
        assert "Completed" in watched, watched[-3000:]

        run, artifacts, deployment = read_run(stack.api_url, flow_run_id)
        assert run.state is not None and run.state.is_completed(), (run.state, stack.log("worker"))
        assert run.deployment_id == deployment.id
        assert deployment.work_pool_name == POOL
        assert run.parameters["input_path"] == str(SAMPLE)
        assert_documented_form(deployment.parameter_openapi_schema)

        # The jobs table is republished as jobs move: the newest version of each key is the final one.
        by_key = {a.key: a for a in sorted(artifacts, key=lambda a: a.created) if a.key}
        assert {"deploy-test-progress", "deploy-test-jobs", "deploy-test-results", "deploy-test-estimate",
                "deploy-test-results-summary"} <= set(by_key), sorted(by_key)
        assert float(by_key["deploy-test-progress"].data) == 100.0
        jobs = _table(by_key["deploy-test-jobs"].data)
        assert len(jobs) == 1 and jobs[0]["shard"] == "shard-0001", jobs  # 120 rows: one shard
        assert all(row["status"] == "Completed" and row["ok"] == 120 for row in jobs), jobs
        assert f"s3://{stack.bucket}/deploy/" in by_key["deploy-test-results"].data
        estimate = {row["item"]: row["value"] for row in _table(by_key["deploy-test-estimate"].data)}
        assert estimate["records"] == "120" and estimate["cost, expected (batch)"].startswith("$"), estimate
        summary = by_key["deploy-test-results-summary"].data
        assert "| ok | 120 |" in summary, summary

        s3 = stack.s3()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix="deploy/")["Contents"]]
        parts = [k for k in keys if re.search(r"/results/part-[^/]+\.parquet$", k)]
        assert parts, keys
        out = pl.concat([pl.read_parquet(io.BytesIO(s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read()))
                         for k in parts], how="diagonal_relaxed")
        stack.mark("checked")
        print("timings (s):", stack.timings)

    topics = pl.read_csv(SAMPLE)
    assert out.height == topics.height == 120
    assert out["record_id"].n_unique() == out.height
    assert sorted(out["topic"].to_list()) == sorted(topics["topic"].to_list())
    assert out["error_code"].null_count() == out.height
    expected = [f"Emulated reply to: Tell me a joke about {t} in less than 50 words." for t in out["topic"]]
    assert out["response"].to_list() == expected


def assert_documented_form(schema: dict[str, Any]) -> None:
    """The deployment form as the server holds it: every field described, grouped in the user's order."""
    fields = sorted(schema["properties"].items(), key=lambda item: item[1]["position"])
    undocumented = [name for name, field in fields if not field.get("description")]
    assert not undocumented, undocumented
    groups = [field["description"].split(". ", 1)[0] for _, field in fields]
    order = ["Source", "Prompt and model", "Inference settings", "Limits", "Output and AWS", "Behaviour"]
    assert list(dict.fromkeys(groups)) == order, groups  # each group's fields together, in this order
    assert "AwsCredentials" in str(schema["properties"]["aws_credentials"])


def _table(data: Any) -> list[dict[str, Any]]:
    import json

    rows = json.loads(data) if isinstance(data, str) else data
    return list(rows)
