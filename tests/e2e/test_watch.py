"""While jobs run, the flow reads CloudWatch and warns about jobs that queue too long."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"


def test_a_run_logs_batch_metrics_and_warns_about_a_job_stuck_in_the_queue(
    prefect_api: str, emulator: Any, local_aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.batch_inference import batch_inference
    from tasks.aws import client

    bucket = f"watch-{uuid.uuid4().hex[:8]}"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    before = emulator.profile
    # Jobs wait ~3 s in the queue; "stuck" after ~1 s of queueing.
    emulator.set_profile({"time_scale": 1e-3, "queue_s": 3000})
    prefect_logger = logging.getLogger("prefect")  # Prefect's loggers do not propagate to the root
    prefect_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            summary = batch_inference(
                model_id=CLAUDE, input_path=str(REPO / "samples" / "topics.csv"), prompt_id="joke_about_topic",
                job_name_prefix="watch", output_uri=f"s3://{bucket}/out",
                role_arn="arn:aws:iam::123456789012:role/R", poll_interval_s=1, queued_warn_hours=1 / 3600,
            )
    finally:
        prefect_logger.removeHandler(caplog.handler)
        emulator.set_profile(before)
    assert summary["ok"] == 120
    text = caplog.text
    assert "still Scheduled" in text or "still Submitted" in text or "still Validating" in text
    assert "CloudWatch AWS/Bedrock/Batch" in text and "records pending" in text

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["watch-cloudwatch"])))
    assert artifacts and artifacts[0].type == "table"
