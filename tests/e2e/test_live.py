"""What a Prefect user sees while a run is going: the jobs table and the progress artifact are live,
read through the Prefect API mid-run, and each job state change is a Prefect event."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.conftest import REPO, cli_env
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"


def _latest(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort="CREATED_DESC", limit=1)
    return found[0] if found else None


def test_the_jobs_table_and_progress_are_live_mid_run_and_job_states_are_events(
    prefect_api: str, emulator: Any, local_aws: Any, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from tasks.aws import client

    bucket = f"live-{uuid.uuid4().hex[:8]}"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    prefix = f"live{uuid.uuid4().hex[:6]}"
    path = tmp_path / "topics.csv"
    pl.DataFrame({"topic": [f"topic {i}" for i in range(400)]}).write_csv(path)
    before = emulator.profile
    emulator.set_profile({"time_scale": 6e-3, "min_records": 50})  # jobs of ~6 s: long enough to look at
    args = ["--input-path", str(path), "--prompt-id", "joke_about_topic", "--model-id", CLAUDE, "--job-name-prefix",
            prefix, "--output-uri", f"s3://{bucket}/out", "--role-arn", ROLE, "--max-records-per-job", "100",
            "--min-records-per-job", "50", "--max-concurrent-jobs", "2", "--poll-interval-s", "1",
            "--output-dir", str(tmp_path / "o")]
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", *args], cwd=REPO, text=True,
                             env=cli_env(emulator, prefect_api), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def table_in_progress() -> list[dict[str, Any]] | None:
            artifact = _latest(f"{prefix}-jobs")
            rows = json.loads(artifact.data) if artifact is not None and isinstance(artifact.data, str) else None
            if rows and any(r.get("status") in ("Submitted", "Validating", "Scheduled", "InProgress") for r in rows):
                return rows
            return None

        rows = wait_for(table_in_progress, 120, "a jobs table with jobs in flight")
        running = child.poll() is None
        progress = _latest(f"{prefix}-progress")
        log, _ = child.communicate(timeout=300)
    finally:
        child.kill()
        emulator.set_profile(before)
    assert child.returncode == 0, log[-3000:]
    assert running  # read while the run was going
    assert len(rows) == 4 and {r["shard"] for r in rows} == {f"shard-000{i}" for i in range(1, 5)}
    # Two slots, four shards: the other two were waiting (visible in the table, an INFO line in the log).
    assert "waits for a slot" in log and "ERROR" not in log
    assert progress is not None and "/ 400 records" in (progress.description or "")
    assert "jobs:" in (progress.description or "")
    with get_client(sync_client=True) as prefect:
        events = prefect.read_events(filter=EventFilter(
            event=EventNameFilter(prefix=["bedrock.batch.job."]),
            resource=EventResourceFilter(labels={"bedrock-batch-flows.shard": ["shard-0001"]}),
        ), limit=50).events
    names = {e.event for e in events if e.resource.get("prefect.resource.name", "").startswith(prefix)}
    assert "bedrock.batch.job.completed" in names, names
