"""The automations shipped in deployments/automations/, created the way deployments/README.md says and
fired by the events the flow emits.

Against the session's Prefect API (a real server process, whose trigger and action services run): a
webhook notification block pointing at a receiver in this test, its id put into each file, then
`prefect automation create --from-file`; read back through the API; then the flow's own emitters
(`emit_job_event`, `emit_job_warning_events`) send a failed and a stuck job's events, and the receiver
gets one notification each, naming the job, while a completed job's event notifies nobody.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AUTOMATIONS = REPO / "deployments" / "automations"
PREFECT = str(Path(sys.executable).with_name("prefect"))
PLACEHOLDER = "<notification-block-id>"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP endpoint standing in for Slack & co.: (its URL, the JSON bodies it received)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


@pytest.fixture
def notification_block(prefect_api: str, receiver: tuple[str, list[dict[str, Any]]]) -> Iterator[str]:
    """A saved webhook notification block (an operator would save a SlackWebhook...); its id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    url, _ = receiver
    name = f"bbf-alerts-{uuid.uuid4().hex[:8]}"
    block = CustomWebhookNotificationBlock(name=name, url=url, allow_private_urls=True,
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save(name)
    yield str(block_id)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_block_document(block_id)


def _prefect(*args: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run([PREFECT, *args], env=env, capture_output=True, text=True, timeout=120)


def _create_from_file(path: Path, block_id: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """What deployments/README.md has an operator type: the block id in, then `--from-file`."""
    filled = tmp_path / path.name
    filled.write_text(path.read_text().replace(PLACEHOLDER, block_id))
    return _prefect("automation", "create", "--from-file", str(filled))


def test_the_shipped_automations_are_created_from_their_files_and_fire_on_the_flows_events(
    notification_block: str, receiver: tuple[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.core.job_warnings import JobWarning
    from tasks.report import emit_job_event, emit_job_warning_events

    with get_client(sync_client=True) as client:
        name = client.read_block_document(notification_block).name
    # The README's way to the id: `prefect block inspect <type>/<name> -o json`.
    shown = _prefect("block", "inspect", f"custom-webhook/{name}", "-o", "json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == notification_block, shown.stdout

    files = sorted(AUTOMATIONS.glob("*.yaml"))
    assert {f.name for f in files} >= {"job-failed.yaml", "job-stuck.yaml"}
    created: list[Any] = []
    try:
        with get_client(sync_client=True) as client:
            for path in files:
                assert PLACEHOLDER in path.read_text(), f"{path.name}: the README's recipe needs the placeholder"
                done = _create_from_file(path, notification_block, tmp_path)
                spec = yaml.safe_load(path.read_text())
                found = client.read_automations_by_name(spec["name"])
                created += found
                assert done.returncode == 0 and "Created automation" in done.stdout, done.stdout + done.stderr
                [automation] = found
                # Read back: what the server keeps is what the file says.
                assert automation.enabled
                assert automation.trigger.expect == set(spec["trigger"]["expect"])
                assert automation.trigger.for_each == set(spec["trigger"]["for_each"])
                assert automation.trigger.match.model_dump()["prefect.resource.id"] == \
                    spec["trigger"]["match"]["prefect.resource.id"]
                [action] = automation.actions
                assert action.type == "send-notification" and str(action.block_document_id) == notification_block

        # The flow's own emitters: a completed job (no notification), a failed one, a stuck one.
        _, received = receiver
        run = uuid.uuid4().hex[:12]
        arn = f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{{}}{run[:4]}"
        done_arn, failed_arn, stuck_arn = (arn.format(kind) for kind in ("done", "fail", "stck"))
        model = "anthropic.claude-3-haiku-20240307-v1:0"

        @flow(name="bbf-automation-events")
        def events_of_a_run() -> None:  # the emitters publish inside a run, as in the flow's job tasks
            emit_job_event({"jobArn": done_arn, "jobName": f"jobs-{run}-0001", "status": "Completed",
                            "modelId": model}, run, "shard-0001")
            emit_job_event({"jobArn": failed_arn, "jobName": f"jobs-{run}-0002", "status": "Failed",
                            "modelId": model, "message": "the role cannot read the bucket"}, run, "shard-0002")
            emit_job_warning_events([JobWarning(
                kind="stuck", job_arn=stuck_arn, job_name=f"jobs-{run}-0003", model_id=model,
                status="Scheduled", seconds=7 * 3600.0, message=f"jobs-{run}-0003 has been Scheduled for 7.0 h")])

        events_of_a_run()

        def notified() -> list[dict[str, Any]] | None:
            mine = [body for body in received if run[:4] in json.dumps(body)]
            return mine if len(mine) >= 2 else None

        mine = wait_for(notified, 60, "a notification for the failed job and one for the stuck job")
        text = [json.dumps(body) for body in mine]
        assert any(failed_arn in t and "Failed" in t and "the role cannot read the bucket" in t for t in text), text
        assert any(stuck_arn in t and "stuck" in t and "Scheduled for 7.0 h" in t for t in text), text
        assert not any(done_arn in t for t in text), "a completed job notified someone"
    finally:
        with get_client(sync_client=True) as client:
            for automation in created:
                client.delete_automation(automation.id)
