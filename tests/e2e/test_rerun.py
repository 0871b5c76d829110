"""Re-runs after the input or the plan changed: each answer belongs to its own request, none is paid twice.

Every scenario runs the flow on a CSV (ids generated from row positions, the hard case: an inserted row
renumbers every row after it), changes the file in place or a parameter, and runs again with the same
output location. The emulator replies "Emulated reply to: <prompt>", so each output row can be checked
against its own current prompt; its call log tells what the re-run paid for.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.conftest import REPO, cli_env
from tests.e2e.helpers import CREATE, GET, created_jobs, joke_answer, paid_requests, read_output, wait_for

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
IN_FLIGHT = {"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"}
ROWS = 300  # three shards of 100


def topics(n: int, tag: str = "t") -> pl.DataFrame:
    return pl.DataFrame({"topic": [f"{tag}{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(n)]})


@pytest.fixture
def quick(emulator: Any, local_aws: Any) -> Any:
    before = emulator.profile
    emulator.set_profile({"time_scale": 1e-4, "min_records": 50})
    yield emulator
    emulator.set_profile(before)


@pytest.fixture
def out_uri(local_aws: Any) -> str:
    """A fresh bucket: an empty answer cache."""
    from tasks.aws import client

    bucket = f"rerun-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


def run(emulator: Any, path: Path, out_uri: str, **params: Any) -> tuple[dict[str, Any], pl.DataFrame, int]:
    """The flow on `path`; returns its summary, its output and the number of requests it paid for."""
    from flows.batch_inference import batch_inference

    before = len(emulator.calls())
    summary = batch_inference(**{
        "model_id": CLAUDE, "input_path": str(path), "prompt_id": "joke_about_topic", "job_name_prefix": "rerun",
        "output_uri": out_uri, "role_arn": ROLE, "max_records_per_job": 100, "min_records_per_job": 50,
        "poll_interval_s": 0.5, **params,
    })
    return summary, read_output(summary["results_uri"]), paid_requests(emulator.calls()[before:])


def assert_answers_own_rows(output: pl.DataFrame, current: pl.DataFrame) -> None:
    """Exactly the current input's rows, once each, each with the reply to its own current prompt."""
    assert output.height == current.height, f"{output.height} output rows for {current.height} input rows"
    assert output["record_id"].n_unique() == output.height
    assert sorted(output["topic"].to_list()) == sorted(current["topic"].to_list())
    assert output["error_code"].null_count() == output.height, output["error_code"].value_counts()
    wrong = output.filter(pl.col("response") != joke_answer(pl.col("topic"))["response"])
    assert wrong.is_empty(), f"{wrong.height} row(s) carry another row's reply: {wrong.head(3).to_dicts()}"


def edit_one(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.when(pl.int_range(pl.len()) == 137).then(pl.lit("edited-" + uuid.uuid4().hex[:6]))
                           .otherwise(pl.col("topic")).alias("topic"))


# name -> (new input from the old one, parameters of the re-run, requests the change makes new)
CHANGES: dict[str, tuple[Callable[[pl.DataFrame], pl.DataFrame], dict[str, Any], int]] = {
    "edited-row": (edit_one, {}, 1),
    "inserted-row-without-record-id": (lambda df: pl.concat([topics(1, "new"), df]), {}, 1),
    "reordered-rows": (lambda df: df.reverse(), {}, 0),
    "shrunk-input": (lambda df: df.head(170), {}, 0),
    "grown-input": (lambda df: pl.concat([df, topics(60, "more")]), {}, 60),
    "max-concurrent-jobs-changed": (lambda df: df, {"max_concurrent_jobs": 3}, 0),
    "max-records-per-job-changed": (lambda df: df, {"max_records_per_job": 60}, 0),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_rerun_after_a_change_answers_every_row_with_its_own_reply_and_pays_only_for_what_changed(
    prefect_api: str, quick: Any, out_uri: str, tmp_path: Path, change: str
) -> None:
    edit, params, new_requests = CHANGES[change]
    path = tmp_path / "topics.csv"
    first = topics(ROWS)
    first.write_csv(path)
    summary, output, paid = run(quick, path, out_uri)
    assert_answers_own_rows(output, first)
    assert paid == ROWS and summary["cached"] == 0

    current = edit(first)
    current.write_csv(path)  # the same file, changed in place; the same parameters but `params`
    summary, output, paid = run(quick, path, out_uri, **params)
    assert_answers_own_rows(output, current)
    assert paid == new_requests, f"paid for {paid} request(s), {new_requests} changed"
    assert summary["cached"] == current.height - new_requests and summary["total_rows"] == current.height
    if summary["cached"]:
        assert summary["cache_saved_usd"] > 0


def test_reuse_answers_off_sends_everything_again(prefect_api: str, quick: Any, out_uri: str, tmp_path: Path) -> None:
    path = tmp_path / "topics.csv"
    rows = topics(120)
    rows.write_csv(path)
    run(quick, path, out_uri)
    summary, output, paid = run(quick, path, out_uri, reuse_answers=False)
    assert paid == 120 and summary["cached"] == 0
    assert_answers_own_rows(output, rows)


def test_two_datasets_sharing_prompts_share_answers(prefect_api: str, quick: Any, out_uri: str, tmp_path: Path) -> None:
    shared = topics(150)
    shared.write_csv(tmp_path / "a.csv")
    run(quick, tmp_path / "a.csv", out_uri)
    other = pl.concat([shared.sample(fraction=1.0, shuffle=True, seed=1), topics(5, "b")])
    other.write_csv(tmp_path / "b.csv")
    summary, output, paid = run(quick, tmp_path / "b.csv", out_uri, job_name_prefix="other")
    assert paid == 5 and summary["cached"] == 150
    assert_answers_own_rows(output, other)


def test_a_run_killed_mid_poll_then_rerun_with_an_edited_input_pays_only_for_the_edit(
    prefect_api: str, emulator: Any, local_aws: Any, out_uri: str, tmp_path: Path
) -> None:
    path = tmp_path / "topics.csv"
    first = topics(ROWS)
    first.write_csv(path)
    args = ["--input-path", str(path), "--prompt-id", "joke_about_topic", "--model-id", CLAUDE,
            "--job-name-prefix", "killed", "--output-uri", out_uri, "--role-arn", ROLE, "--max-records-per-job",
            "100", "--min-records-per-job", "50", "--max-concurrent-jobs", "3", "--poll-interval-s", "0.5"]
    before = emulator.profile
    emulator.set_profile({"time_scale": 1e-2, "min_records": 50})  # jobs of ~10 s: killed while polled
    start = len(emulator.calls())
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", *args], cwd=REPO,
                             env=cli_env(emulator, prefect_api), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        names = wait_for(lambda: len(jobs := created_jobs(emulator.calls()[start:])) == 3 and jobs, 120,
                         "all three jobs submitted")
        # A job that ended before the kill may have been collected by the killed run (its answers cached,
        # nothing to adopt): on a loaded machine the third submission can come that late.
        in_flight = sum(1 for job in emulator.engine.jobs() if job.name in names and job.status in IN_FLIGHT)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        emulator.set_profile({"time_scale": 1e-4, "min_records": 50})
    killed_calls = emulator.calls()[start:]

    current = edit_one(first)
    current.write_csv(path)
    try:
        summary, output, paid = run(emulator, path, out_uri, job_name_prefix="killed", max_concurrent_jobs=3)
    finally:
        emulator.set_profile(before)
    assert_answers_own_rows(output, current)
    assert paid_requests(killed_calls) == ROWS  # the killed run's three jobs (counted once they validated)
    # The killed run's jobs were adopted (waited for, their answers cached); only the edited row was sent.
    assert paid == 1 and summary["jobs_submitted"] == 0 and 1 <= in_flight <= summary["jobs_attached"] <= 3
    assert not [c for c in emulator.calls()[start:] if c["operation"] == CREATE and c["status_code"] == 200][3:]


@pytest.mark.slow
def test_a_45_s_endpoint_outage_mid_poll_leaves_every_row_answered(
    prefect_api: str, emulator: Any, local_aws: Any, out_uri: str, tmp_path: Path
) -> None:
    """The endpoint (Bedrock and S3) unreachable for 45 s while jobs are polled: botocore's connection
    errors are transient, so polling goes on and no Completed job is marked failed."""
    import threading

    from tests.e2e.helpers import TcpProxy

    path = tmp_path / "topics.csv"
    rows = topics(200)
    rows.write_csv(path)
    proxy = TcpProxy(emulator.url)
    args = ["--input-path", str(path), "--prompt-id", "joke_about_topic", "--model-id", CLAUDE,
            "--job-name-prefix", "outage", "--output-uri", out_uri, "--role-arn", ROLE, "--max-records-per-job",
            "100", "--min-records-per-job", "50", "--max-concurrent-jobs", "2", "--poll-interval-s", "1",
            "--output-dir", str(tmp_path / "o")]
    before = emulator.profile
    emulator.set_profile({"time_scale": 3e-3, "min_records": 50})
    start = len(emulator.calls())
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", *args], cwd=REPO, text=True,
                             env=cli_env(emulator, prefect_api, AWS_ENDPOINT_URL=proxy.url),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def polled_after_both_created() -> bool:
            calls = emulator.calls()[start:]
            creates = [i for i, c in enumerate(calls) if c["operation"] == CREATE and c["status_code"] == 200]
            return len(creates) == 2 and any(c["operation"] == GET for c in calls[creates[-1] + 1:])

        wait_for(polled_after_both_created, 120, "both jobs submitted and being polled")
        proxy.down()
        outage = threading.Event()
        outage.wait(45)  # the outage's length, not a synchronisation
        after_outage = len(emulator.calls())
        proxy.up()
        output_text, _ = child.communicate(timeout=300)
    finally:
        child.kill()
        proxy.down()
        emulator.set_profile(before)
    assert child.returncode == 0, output_text[-3000:]
    assert any(c["operation"] == GET for c in emulator.calls()[after_outage:])  # polling went on after it
    assert len(created_jobs(emulator.calls()[start:])) == 2  # nothing resubmitted: no job was marked failed
    results = output_text.strip().splitlines()[-1].removeprefix("results: ")
    assert_answers_own_rows(pl.read_parquet(results), rows)


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process descending from `root` (Linux /proc)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {}, [root]
    while todo:
        current = todo.pop()
        for pid, ppid in parent_of.items():
            if ppid == current:
                try:
                    found[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                todo.append(pid)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_prefect_server_a_killed_plain_python_run_started_does_not_outlive_it(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "AWS_ENDPOINT_URL")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true")
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", "--local", "--output-dir",
                              str(tmp_path / "out"), "--poll-interval-s", "1"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers = wait_for(lambda: {p: c for p, c in _descendants(child.pid).items() if "uvicorn" in c}, 120,
                           "the run's Prefect API server")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    alive = lambda: [p for p in servers if Path(f"/proc/{p}").exists()  # noqa: E731
                     and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    wait_for(lambda: not alive(), 30, f"the orphaned server {servers} to end")
