"""End-to-end fixtures: AWS settings on the emulator, a flow run in a child process (`prefect_api`, the
session's Prefect API, is in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


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
