"""End-to-end fixtures: one Prefect API for the whole session (it takes 10-20 s to start here)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (the test harness's server) and its URL, for in-process runs and subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def local_aws(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point this process's AWS settings (client factory, Polars) at the emulator."""
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    from tasks.aws import AwsSettings

    return AwsSettings.from_env()


def cli_env(emulator: Any, prefect_api: str, **extra: str) -> dict[str, str]:
    """The environment of a flow run in a child process: the emulator endpoint and the session's API."""
    env = {**os.environ, **emulator.env(), "PREFECT_API_URL": prefect_api, **extra}
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.batch_inference", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
