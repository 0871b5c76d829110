"""Smoke check of the benchmark harness (not a benchmark): a tiny run finishes and reports every key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KEYS = {
    "prepare_rows_per_s", "prepare_vs_floor", "collect_rows_per_s", "collect_vs_floor", "titan_collect_vs_floor",
    "peak_rss_mb", "makespan_vs_lower_bound", "refill_delay_s", "emulator_rows_per_s", "emulator_vs_prepare",
}


@pytest.mark.slow  # ~30 s: every stage, and a flow run on the emulator behind the makespan figures
def test_bench_run_smoke(prefect_api: str) -> None:
    proc = subprocess.run(
        # The flow part on 600 rows (6 shards on 2 slots: 3 waves, so slots are refilled) with a 5 s job phase,
        # on the session's Prefect API rather than a server of its own.
        [sys.executable, "-m", "bench.run", "--rows", "2000", "--flow-rows", "600", "--flow-target-s", "5", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "PREFECT_API_URL": prefect_api},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result) >= KEYS, KEYS - set(result)
    assert all(isinstance(result[k], int | float) for k in KEYS)
    assert result["makespan_source"] == "flow on the emulator" and result["flow"]["refills"] > 0
    assert result["flow"]["failed"] == 0 and result["flow"]["ok"] == 600
