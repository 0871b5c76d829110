"""Shared fixtures: real servers over HTTP, one of each per test session.

- `s3_endpoint`: a moto server (S3, CloudWatch, IAM, STS...) on an ephemeral loopback port.
- `emulator`: the project's Bedrock emulator, one endpoint that also serves moto's services.
- `prefect_api`: one Prefect test harness (ephemeral API) per session; it is slow to start.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Dummy credentials and no network: set before boto3 or Prefect read the environment.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # An isolated Prefect home per test session; leases on disk, as the plain-Python entry point uses.
        "PREFECT_HOME": tempfile.mkdtemp(prefix="bbf-prefect-home-"),
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

REPO = Path(__file__).resolve().parent.parent


# Modules whose tests stay on one xdist worker: their module-scoped fixtures (moto stacks) are made once.
KEEP_TOGETHER = {"tests/test_cloudformation.py"}


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own; optional: plain pytest has no xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` (what ./dev passes), with each KEEP_TOGETHER module as one unit of work.

    (xdist_group marks would say the same, but pytest 9.2's node ids drop the group: pytest-xdist #1386.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in KEEP_TOGETHER else super()._split_scope(nodeid)

    return Scheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the Prefect API is `e2e` (out of `./dev fast`) even when unmarked. Then longest first:
    `slow` tests, then `e2e`, then the rest (collection order within each).

    `./dev test` runs `-n auto --dist loadgroup`: each worker takes the next test in this order, so the long
    tests start at once on different workers and the short ones fill in at the end. Each worker is its own
    session (its own moto, emulator, Prefect harness and PREFECT_HOME, on ephemeral ports)."""
    for item in items:
        if "prefect_api" in getattr(item, "fixturenames", ()) and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)
    rank = {"slow": 0, "e2e": 1}
    items.sort(key=lambda item: min((rank[m.name] for m in item.iter_markers() if m.name in rank), default=2))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A plain moto server: the AWS services without Bedrock."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws(s3_endpoint: str):
    """AwsSettings for the moto server."""
    from tasks.aws import AwsSettings

    return AwsSettings(region="us-east-1", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(aws) -> str:
    """A fresh, empty bucket per test."""
    from tasks.aws import client

    name = f"test-{uuid.uuid4().hex[:12]}"
    client("s3", aws).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def emulator():
    """The Bedrock emulator (with moto behind it) on an ephemeral port, fast time scale for tests."""
    from emulator import start

    # 1e-4: a 1,000-record job (~24 emulated minutes) takes ~0.15 s of emulated time.
    server = start(port=0, profile={"time_scale": 1e-4})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (the test harness's server) and its URL, for in-process runs and subprocesses.

    It takes 10-20 s to start here, so one per session (per xdist worker); any test using it is `e2e`."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
