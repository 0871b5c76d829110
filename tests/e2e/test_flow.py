"""The flow end to end: a real Prefect API, the emulator (Bedrock + moto S3) over HTTP, no mocks.

Read as examples: run the flow in-process or as the CLI in a child process, then check the output
Parquet and the emulator's record of every API call.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.conftest import REPO, cli_env, run_cli

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
TOPICS = REPO / "samples" / "topics.csv"
SAMPLE = REPO / "samples" / "simplecot_sample.jsonl"
TEXTS = REPO / "samples" / "texts.csv"


@pytest.fixture
def fresh_bucket(local_aws: Any) -> str:
    from tasks.aws import client

    name = f"e2e-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=name)
    return name


@pytest.fixture
def clean_emulator(emulator: Any) -> Any:
    """The session's emulator with an empty call log; its profile restored afterwards."""
    before = emulator.profile
    emulator.reset()
    yield emulator
    emulator.set_profile(before)


def read_results(results_uri: str) -> pl.DataFrame:
    from tests.e2e.helpers import read_output

    return read_output(results_uri)


def created_job_names(calls: list[dict[str, Any]]) -> Counter[str]:
    """Jobs Bedrock accepted, by name (a repeated token answered with the same ARN counts once)."""
    arns: dict[str, set[str]] = {}
    for call in calls:
        if call.get("operation") == "CreateModelInvocationJob" and call.get("status_code") == 200:
            arns.setdefault(call["jobName"], set()).add(call["jobArn"])
    return Counter({name: len(found) for name, found in arns.items()})


def test_generation_run_returns_every_row_once_joined_to_its_own_reply(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str
) -> None:
    from flows.batch_inference import batch_inference

    summary = batch_inference(
        model_id=CLAUDE, input_path=str(TOPICS), prompt_id="joke_about_topic", job_name_prefix="jokes_e2e",
        output_uri=f"s3://{fresh_bucket}/out", role_arn=ROLE, max_records_per_job=50_000, poll_interval_s=1,
    )
    out = read_results(summary["results_uri"])
    topics = pl.read_csv(TOPICS)
    assert out.height == topics.height == summary["total_rows"] == summary["ok"]
    assert out["record_id"].n_unique() == out.height
    assert out["error_code"].null_count() == out.height
    # The emulator replies "Emulated reply to: <prompt>": each row's reply names that row's own topic.
    assert out.select(pl.col("response").str.contains(pl.col("topic"), literal=True).all()).item()
    assert (out["input_tokens"] > 0).all() and (out["output_tokens"] > 0).all()
    assert summary["jobs_submitted"] == 1 and summary["cost_usd"] is not None
    # Bedrock's quirk handled: the prefix's underscore would be rejected in a job name.
    assert all(name.startswith("jokes-e2e-") for name in created_job_names(clean_emulator.calls()))


def test_embedding_run_returns_unit_vectors_of_the_asked_dimension(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str
) -> None:
    from flows.batch_inference import batch_inference

    summary = batch_inference(
        model_id=TITAN, input_path=str(TEXTS), job_name_prefix="emb", embedding_dimensions=256,
        output_uri=f"s3://{fresh_bucket}/out", role_arn=ROLE, poll_interval_s=1,
    )
    out = read_results(summary["results_uri"])
    assert out.height == pl.read_csv(TEXTS).height == summary["ok"]
    assert out.schema["embedding"] == pl.List(pl.Float32)
    assert "response" not in out.columns
    lengths = out["embedding"].list.len()
    assert (lengths == 256).all()
    norms = out.select(pl.col("embedding").list.eval(pl.element().pow(2)).list.sum().sqrt())["embedding"]
    assert ((norms - 1.0).abs() < 1e-3).all()


def test_in_flight_jobs_never_exceed_max_concurrent_jobs(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str
) -> None:
    from flows.batch_inference import batch_inference

    # Jobs of ~5 s: long enough that, unthrottled, all 6 would run at once, and that two overlap even
    # when a loaded machine takes seconds to start the next task.
    clean_emulator.set_profile({"time_scale": 5e-3, "min_records": 50})
    summary = batch_inference(
        model_id=CLAUDE, input_path=str(SAMPLE), prompt_id="question_answering", job_name_prefix="slots",
        output_uri=f"s3://{fresh_bucket}/out", role_arn=ROLE, max_records_per_job=50, min_records_per_job=50,
        max_concurrent_jobs=2, poll_interval_s=0.5,
    )
    assert summary["shards"] == 6 and summary["ok"] == 300
    peak = clean_emulator.stats()["peak_in_flight"]
    assert peak[CLAUDE] == 2, peak


def _run_args(bucket: str, prefix: str, *extra: str) -> list[str]:
    return [
        "--input-path", str(SAMPLE), "--prompt-id", "question_answering", "--model-id", CLAUDE,
        "--job-name-prefix", prefix, "--output-uri", f"s3://{bucket}/out-{prefix}", "--role-arn", ROLE,
        "--max-records-per-job", "50", "--min-records-per-job", "50", "--poll-interval-s", "0.5", *extra,
    ]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_killed_run_resumes_attaching_to_its_jobs_and_submits_nothing_twice(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str
) -> None:
    from tasks.concurrency import active_slots, limit_name

    clean_emulator.set_profile({"time_scale": 1e-2, "min_records": 50})  # ~10 s jobs: killed mid-poll
    env = cli_env(clean_emulator, prefect_api)
    args = _run_args(fresh_bucket, "resume", "--max-concurrent-jobs", "3")
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    limit = limit_name(CLAUDE, "us-east-1")
    try:
        # Killed while its first wave holds all three slots: not while it asks for one, where the server may
        # have granted a lease the process had no time to write down (see flows/local/leases.py).
        _wait_for(lambda: len(created_job_names(clean_emulator.calls())) == 3 and active_slots(limit) == 3, 120,
                  "the first wave submitted, holding the run's three slots")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    first = created_job_names(clean_emulator.calls())
    assert len(first) == 3, first
    clean_emulator.set_profile({"time_scale": 3e-3, "min_records": 50})  # the re-run's jobs: ~3 s

    again = run_cli(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    created = created_job_names(clean_emulator.calls())
    assert len(created) == 6 and set(created.values()) == {1}, created  # each shard's job exactly once
    assert set(first) <= set(created)
    assert "attached to" in again.stderr + again.stdout
    results_line = again.stdout.strip().splitlines()[-1]
    assert results_line.startswith("results: ")
    out = pl.read_parquet(results_line.removeprefix("results: "))
    assert out.height == 300 and out["record_id"].n_unique() == 300 and out["response"].null_count() == 0
    # The killed run's slots were given back: nothing blocks the next run.
    assert active_slots(limit) == 0


def test_cli_takes_the_reference_event_document(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str, tmp_path: Path
) -> None:
    event = {"s3_uri": f"s3://{fresh_bucket}/inputs/topics.csv", "job_name_prefix": "joke-generation",
             "model_id": CLAUDE, "prompt_id": "joke_about_topic", "max_num_jobs": 1, "max_records_per_job": 100}
    from tasks.aws import client

    client("s3").upload_file(str(TOPICS), fresh_bucket, "inputs/topics.csv")
    (tmp_path / "event.json").write_text(json.dumps(event))
    done = run_cli(["--event", str(tmp_path / "event.json"), "--output-uri", f"s3://{fresh_bucket}/out",
                    "--role-arn", ROLE, "--poll-interval-s", "0.5", "--output-dir", str(tmp_path / "output")],
                   cli_env(clean_emulator, prefect_api))
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("results: "))
    assert path.parent == tmp_path / "output" / "joke-generation"
    out = pl.read_parquet(path)
    assert out.height == 100  # max_num_jobs=1 of at most 100 records: the first 100 topics only
    assert created_job_names(clean_emulator.calls()).total() == 1


def test_dry_run_estimates_without_submitting_and_within_10_percent_of_the_real_tokens(
    prefect_api: str, clean_emulator: Any, fresh_bucket: str
) -> None:
    clean_emulator.set_profile({"time_scale": 1e-4, "min_records": 50})
    env = cli_env(clean_emulator, prefect_api)
    dry = run_cli(_run_args(fresh_bucket, "dry", "--dry-run"), env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "input tokens (est.)" in dry.stdout and "makespan (forecast)" in dry.stdout
    assert not created_job_names(clean_emulator.calls())
    estimated = int(dry.stdout.split("input tokens (est.)")[1].split("|")[1].strip().replace(",", ""))

    real = run_cli(_run_args(fresh_bucket, "dry"), env)
    assert real.returncode == 0, real.stderr[-3000:]
    out = pl.read_parquet(real.stdout.strip().splitlines()[-1].removeprefix("results: "))
    actual = int(out["input_tokens"].sum())
    assert abs(estimated - actual) <= 0.1 * actual, (estimated, actual)


def test_readme_first_command_runs_the_sample_offline(prefect_api: str, tmp_path: Path) -> None:
    """`./dev sample` is `python -m flows.batch_inference --local`: it must finish and print `results:`."""
    import os

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("AWS_ENDPOINT_URL", None)
    done = subprocess.run([sys.executable, "-m", "flows.batch_inference", "--local", "--output-dir",
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("results: ")
    out = pl.read_parquet(last.removeprefix("results: "))
    sample = pl.read_ndjson(SAMPLE)
    assert out.height == sample.height and out["record_id"].n_unique() == sample.height
    assert (out["response"].str.len_chars() > 0).all()
    assert out.join(sample, on="source", how="anti").is_empty()
