"""The fault matrix (issue 6): each fault the emulator can inject, through the real flow.

Every case checks the same four promises, whatever went wrong:
- every input row is in the output exactly once (a result, or a named `error_code`);
- no (shard, attempt) became two Bedrock jobs (the emulator's call record against the run's ledgers);
- the error is named where a user looks: the output columns, the run's logs, the run's state;
- no slot of the model's concurrency limit is left taken.

The emulator runs at a tiny time scale (a 100-record job takes ~0.1 s), so waits are on conditions and
the flow's poll interval is a fraction of a second. The soak (60 shards, every fault at once) is `slow`:
on 2 cores each shard costs ~0.5 s of CPU in Prefect's task machinery and its API server, whatever the
emulator's speed (the soak takes ~1 min alone, ~1.5 min in the full suite).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e.helpers import (
    assert_every_row_once,
    assert_submitted_once,
    flow_run_logs,
    read_output,
)

pytestmark = pytest.mark.e2e

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
IN_FLIGHT = {"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"}
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"


@dataclass
class Run:
    """One finished flow run, seen from outside: its Prefect state, config, output and logs."""

    state: Any
    cfg: Any
    calls: list[dict[str, Any]]

    @property
    def failed(self) -> bool:
        return bool(self.state.is_failed())

    @property
    def summary(self) -> dict[str, Any]:
        return self.state.result()

    @property
    def output(self) -> pl.DataFrame:
        return read_output(self.cfg.run_uri + "/results/", self.cfg.aws)

    @property
    def logs(self) -> list[str]:
        return flow_run_logs(self.state.state_details.flow_run_id)

    def log_text(self) -> str:
        return "\n".join(self.logs)


@pytest.fixture
def faults(emulator: Any) -> Iterator[Callable[..., None]]:
    """Set emulator knobs for one test (`faults(throttle_rate=0.3)`); the session profile comes back after."""
    base = emulator.profile

    def apply(**changes: Any) -> None:
        emulator.set_profile(base.replace(**changes))

    yield apply
    emulator.set_profile(base)


@pytest.fixture
def bucket(local_aws: Any) -> str:
    from tasks.aws import client

    name = f"faults-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=name)
    return name


def write_topics(path: Path, rows: int) -> list[str]:
    """A CSV of `rows` topics with explicit ids; returns the ids."""
    ids = [f"r-{i:05d}" for i in range(rows)]
    pl.DataFrame({"record_id": ids, "topic": [f"topic number {i}" for i in range(rows)]}).write_csv(path)
    return ids


@pytest.fixture
def topics(tmp_path: Path) -> tuple[Path, list[str]]:
    """400 rows: four 100-record shards."""
    path = tmp_path / "topics.csv"
    return path, write_topics(path, 400)


def flow_params(bucket: str, input_path: Path, prefix: str, **overrides: Any) -> dict[str, Any]:
    """Small, fast settings: 100-record jobs, 4 slots, polls a fifth of a second apart."""
    return {
        "model_id": CLAUDE, "input_path": str(input_path), "prompt_id": "joke_about_topic",
        "job_name_prefix": prefix, "output_uri": f"s3://{bucket}/runs", "role_arn": ROLE,
        "min_records_per_job": 100, "max_records_per_job": 100, "max_concurrent_jobs": 4,
        "max_job_attempts": 3, "poll_interval_s": 0.2, **overrides,
    }


def job_stem(params: dict[str, Any], shard: int, attempt: int | None = None) -> str:
    """The part of a job's name that picks one shard (and attempt) of this run: `<key8>-0002-a1-`.

    Fault knobs (`fail_jobs_matching`...) match on it, so a fault hits this run and no other."""
    from tasks.core.config import config_from_params

    stem = f"{config_from_params(params).key[:8]}-{shard:04d}-"
    return stem + (f"a{attempt}-" if attempt is not None else "")


def run_flow(emulator: Any, params: dict[str, Any]) -> Run:
    """The flow in this process, on the session's Prefect API and the emulator."""
    from flows.batch_inference import batch_inference
    from tasks.core.config import config_from_params

    before = len(emulator.calls())
    state = batch_inference(**params, return_state=True)
    try:
        cfg = config_from_params(params)
    except ValueError:  # parameters the flow refuses: the run failed before it had a configuration
        cfg = None
    return Run(state=state, cfg=cfg, calls=emulator.calls()[before:])


def assert_promises(run: Run, ids: list[str]) -> pl.DataFrame:
    """The four promises every case keeps; returns the output for the case's own checks."""
    from tasks.concurrency import active_slots, limit_name

    output = run.output
    assert_every_row_once(output, ids)
    assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)
    assert active_slots(limit_name(run.cfg.model_id, run.cfg.aws.region)) == 0
    return output


def replies_name_their_topic(output: pl.DataFrame) -> bool:
    ok = output.filter(pl.col("error_code").is_null())
    return bool(ok.select(pl.col("response").str.contains(pl.col("topic"), literal=True).all()).item())


# ---------------------------------------------------------------------------------------- 1. throttling


def test_throttled_control_plane_calls_are_retried_and_the_run_completes(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    faults(throttle_rate={"CreateModelInvocationJob": 0.3, "GetModelInvocationJob": 0.3,
                          "ListModelInvocationJobs": 0.3})
    run = run_flow(emulator, flow_params(bucket, path, "throttle"))

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height
    assert replies_name_their_topic(output)
    throttled = [c["operation"] for c in run.calls if c["status_code"] == 429]
    assert "CreateModelInvocationJob" in throttled and "GetModelInvocationJob" in throttled, throttled
    assert run.summary["jobs_submitted"] == 4


# --------------------------------------------------------------------------------------------- 2. quota


def test_quota_held_by_jobs_of_others_makes_the_run_wait_then_complete(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    # Four foreign jobs fill the quota of four for ~1 s (10,000 emulated seconds at the tests' time scale).
    faults(quota=4, foreign_jobs={CLAUDE: 4}, foreign_job_duration_s=10_000)
    run = run_flow(emulator, flow_params(bucket, path, "quota"))

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height
    refused = [c for c in run.calls if c["operation"] == "CreateModelInvocationJob" and c["status_code"] == 400]
    assert refused, "no Create was refused: the quota knob did not bite"
    assert any("quota full" in line and "ServiceQuotaExceededException" in line for line in run.logs)
    assert run.summary["jobs_submitted"] == 4


# ----------------------------------------------------------------------------------------- 3. failed job


def test_a_job_failing_every_attempt_fails_the_run_naming_job_and_message_and_keeps_other_shards(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    from emulator.profile import DEFAULT_FAILURE_MESSAGE

    path, ids = topics
    params = flow_params(bucket, path, "failing", max_job_attempts=2)
    faults(fail_jobs_matching=job_stem(params, 2))  # every attempt of shard 2: its role "cannot read"
    run = run_flow(emulator, params)

    assert run.failed
    output = assert_promises(run, ids)
    created = sorted(n for n in assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)
                     if job_stem(params, 2) in n)
    assert [n.split("-")[-2] for n in created] == ["a1", "a2"], created  # resubmitted once, new name
    last_job = created[-1]
    # The run's state names the job and Bedrock's message.
    assert last_job in run.state.message and "could not access the input data" in run.state.message
    # The rows of the failed shard say so; the other shards' rows kept their replies.
    failed_rows = output.filter(pl.col("record_id").is_in(ids[100:200]))
    assert failed_rows["error_code"].unique().to_list() == ["job_failed"]
    assert failed_rows["error_message"].str.contains(DEFAULT_FAILURE_MESSAGE, literal=True).all()
    assert failed_rows["error_message"].str.contains(last_job, literal=True).all()
    done = output.filter(~pl.col("record_id").is_in(ids[100:200]))
    assert done.height == 300 and done["error_code"].null_count() == 300 and replies_name_their_topic(done)
    # The logs tell the story: the resubmission, then the final failure.
    text = run.log_text()
    assert "resubmitting as attempt 2" in text and f"{last_job} ended Failed" in text
    # A job that failed every attempt is not retried again as a repair job: no other job was created.
    assert len(assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)) == 5


# -------------------------------------------------------------------------------------------- 4. expired


def test_an_expired_job_is_resubmitted_under_a_new_name(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    params = flow_params(bucket, path, "expiring")
    faults(expire_jobs_matching=job_stem(params, 2, attempt=1))
    run = run_flow(emulator, params)

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height and replies_name_their_topic(output)
    jobs = assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)
    assert sorted(n.split("-")[-2] for n in jobs if job_stem(params, 2) in n) == ["a1", "a2"]
    assert "ended Expired" in run.log_text() and "resubmitting as attempt 2" in run.log_text()


# ---------------------------------------------------------------------------------- 5. partially completed


def test_a_partially_completed_job_keeps_its_outputs_and_the_rest_is_repaired(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    params = flow_params(bucket, path, "partial")
    faults(partial_jobs_matching=job_stem(params, 2, attempt=1))
    run = run_flow(emulator, params)

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height and replies_name_their_topic(output)
    shard = next(j for j in results_manifest(run)["jobs"] if j["shard"] == "shard-0002")
    assert shard["status"] == "PartiallyCompleted" and 0 < shard["ok"] < 100
    # Only the records the job did not process were run again; the others kept their outputs.
    assert run.summary["repaired"] == 100 - shard["ok"]
    jobs = assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)
    assert len([n for n in jobs if job_stem(params, 2) in n]) == 1  # kept, not resubmitted whole


def test_when_every_job_ends_partially_completed_repairs_still_answer_every_row(
    prefect_api: str, emulator: Any, faults: Callable[..., None], local_aws: Any, tmp_path: Path,
) -> None:
    """Main jobs and repair jobs all stop part-way: two rounds of repair jobs, then what is left (under the
    job minimum) goes on-demand instead of staying `missing`."""
    from tasks.aws import client

    # A fixed bucket and an S3 source give a fixed run key; repair rounds take records in shard order, so
    # every job name, and the fate the emulator draws for it, is the same on every run.
    bucket = "faults-allpartial"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    ids = write_topics(tmp_path / "topics.csv", 700)
    client("s3", local_aws).upload_file(str(tmp_path / "topics.csv"), bucket, "input/topics.csv")
    params = flow_params(bucket, tmp_path / "unused", "allpartial")
    del params["input_path"]
    params["s3_uri"] = f"s3://{bucket}/input/topics.csv"
    faults(partial_jobs_matching="allpartial-")
    run = run_flow(emulator, params)

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height and replies_name_their_topic(output)
    rounds = [line.split(": ", 1)[0] for line in run.log_text().splitlines() if "repair round" in line]
    assert rounds == ["repair round 1", "repair round 2", "repair round 3"], rounds
    assert "on-demand" in run.log_text()


def results_manifest(run: Run) -> dict[str, Any]:
    import json

    from tasks.aws import client, split_s3_uri

    bucket, key = split_s3_uri(run.cfg.run_uri + "/results/manifest.json")
    return json.loads(client("s3", run.cfg.aws).get_object(Bucket=bucket, Key=key)["Body"].read())


# -------------------------------------------------------------------------------------- 6. record errors


def test_retryable_record_errors_are_repaired_and_the_others_are_named_in_the_output(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    faults(record_error_rate=0.05, retryable_error_share=0.5)
    run = run_flow(emulator, flow_params(bucket, path, "rec-errors"))

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    errors = output.filter(pl.col("error_code").is_not_null())
    # What stays in error is what a retry cannot fix: Bedrock's 400, with its message.
    assert errors.height > 0 and errors["error_code"].unique().to_list() == ["400"]
    assert errors["error_message"].str.starts_with("Malformed input request").all()
    assert run.summary["repaired"] > 0 and run.summary["errors_by_code"] == {"400": errors.height}
    assert replies_name_their_topic(output)
    assert f"'400': {errors.height}" in run.log_text()


# ------------------------------------------------------------------------------------ 7. broken outputs


@pytest.fixture
def broken_outputs(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> Callable[[str], None]:
    """Damage what the emulator writes for this run's jobs: shard 1 gets three truncated lines, shard 2
    loses its `.jsonl.out`, shard 3 its `manifest.json.out` (as a flaky writer or a lifecycle rule might)."""
    import emulator.jobs as emulator_jobs
    from emulator.processing import split_uri, write_outputs

    stem: list[str] = []

    def damaged(store: Any, output_uri: str, job_id: str, *args: Any, **kwargs: Any) -> dict[str, int]:
        manifest = write_outputs(store, output_uri, job_id, *args, **kwargs)
        if not stem or stem[0] not in output_uri:
            return manifest
        s3 = emulator.client("s3")
        bucket, prefix = split_uri(output_uri)
        base = f"{prefix.rstrip('/')}/{job_id}"
        # Shard files are named by content: jobs/shard-0001-<hash>/<jobId>/shard-0001-<hash>.jsonl.out
        shard = output_uri.rstrip("/").rsplit("/", 1)[-1]
        if shard.startswith("shard-0001-"):
            key = f"{base}/{shard}.jsonl.out"
            lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
            lines[:3] = [line[: len(line) // 2] for line in lines[:3]]
            s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        elif shard.startswith("shard-0002-"):
            s3.delete_object(Bucket=bucket, Key=f"{base}/{shard}.jsonl.out")
        elif shard.startswith("shard-0003-"):
            s3.delete_object(Bucket=bucket, Key=f"{base}/manifest.json.out")
        return manifest

    monkeypatch.setattr(emulator_jobs, "write_outputs", damaged)
    return stem.append


def test_malformed_lines_a_missing_output_file_and_a_missing_manifest_are_reported_and_rows_marked(
    prefect_api: str, emulator: Any, bucket: str, topics: tuple[Path, list[str]],
    broken_outputs: Callable[[str], None],
) -> None:
    from tasks.core.config import config_from_params

    path, ids = topics
    params = flow_params(bucket, path, "broken", repair_failed=False)  # keep the marks to look at them
    broken_outputs(config_from_params(params).run_uri)
    run = run_flow(emulator, params)

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    codes = dict(output.group_by("error_code").len().iter_rows())
    assert codes == {None: 297, "malformed_output": 3, "missing": 100}, codes
    malformed = output.filter(pl.col("error_code") == "malformed_output")
    assert malformed["record_id"].is_in(ids[:100]).all()
    assert malformed["error_message"].str.starts_with("malformed output line: ").all()
    assert output.filter(pl.col("error_code") == "missing")["record_id"].sort().to_list() == ids[100:200]
    assert run.summary["errors_by_code"] == {"malformed_output": 3, "missing": 100}
    text = run.log_text()
    assert "shard-0001: 3 malformed output line(s)" in text
    assert "shard-0002: missing output file shard-0002-" in text
    assert "shard-0003: missing manifest.json.out" in text
    problems = {j["shard"]: j["problems"] for j in results_manifest(run)["jobs"]}
    assert problems["shard-0004"] == [] and all(problems[s] for s in ("shard-0001", "shard-0002", "shard-0003"))


# ------------------------------------------------------------------------------------------ 10. bad input


def _csv(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_csv(path)
    return path


def _topics_frame(rows: int, column: str = "topic") -> pl.DataFrame:
    return pl.DataFrame({"record_id": [f"r-{i:05d}" for i in range(rows)],
                         column: [f"topic number {i}" for i in range(rows)]})


def _latin1_csv(path: Path) -> Path:
    path.write_bytes(b"record_id,topic\n" + "".join(
        f"r-{i:05d},caf\u00e9 number {i}\n" for i in range(150)).encode("latin-1"))
    return path


def _oversized(path: Path) -> Path:
    frame = _topics_frame(200).with_columns(
        pl.when(pl.col("record_id") == "r-00007").then(pl.lit("x" * 1_100_000)).otherwise(pl.col("topic"))
        .alias("topic"))
    return _csv(path, frame)


# case -> (write the input, flow overrides, fragments the error must contain)
BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], dict[str, Any], list[str]]] = {
    "missing template key": (lambda p: _csv(p, _topics_frame(150, column="subject")), {},
                             ["'topic'", "subject", "joke_about_topic"]),
    "empty dataset": (lambda p: _csv(p, _topics_frame(0)), {}, ["no rows"]),
    "duplicate record_id": (lambda p: _csv(p, pl.concat([_topics_frame(150), _topics_frame(3)])), {},
                            ["share a record_id", "r-00000"]),
    "record over the per-record size": (_oversized, {}, ["r-00007", "per-record", "1,000,000"]),
    "record over a lowered max_record_bytes": (lambda p: _csv(p, _topics_frame(150)), {"max_record_bytes": 100},
                                               ["per-record limit of 100 bytes", "raise max_record_bytes"]),
    "non-UTF-8 CSV": (_latin1_csv, {}, ["not valid UTF-8", "iconv"]),
    "unknown model id": (lambda p: _csv(p, _topics_frame(150)), {"model_id": "acme.gpt-9000-v1:0"},
                         ["acme.gpt-9000-v1:0", "not a Bedrock model", "list-foundation-models"]),
    "a model the flow cannot format": (lambda p: _csv(p, _topics_frame(150)), {"model_id": "cohere.command-r-v1:0"},
                                       ["cohere.command-r-v1:0", "Converse"]),
    "output_uri with ..": (lambda p: _csv(p, _topics_frame(150)), {"output_uri": "s3://bucket-x/a/../../b"},
                           ["output_uri", "'..'"]),
    "job_name_prefix with ..": (lambda p: _csv(p, _topics_frame(150)), {"job_name_prefix": "../escape"},
                                ["job_name_prefix", "'..'"]),
    "max_records_per_job under the job minimum": (lambda p: _csv(p, _topics_frame(150)), {"max_records_per_job": 50},
                                                  ["max_records_per_job 50", "Bedrock's minimum of 100",
                                                   "min_records_per_job 100"]),
    "output_uri that cannot be written": (lambda p: _csv(p, _topics_frame(150)),
                                          {"output_uri": "s3://no-such-bucket-for-faults/out"},
                                          ["no-such-bucket-for-faults", "does not exist", "aws s3 mb"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_any_job_with_an_error_saying_what_to_fix(
    case: str, prefect_api: str, emulator: Any, bucket: str, tmp_path: Path,
) -> None:
    write, overrides, fragments = BAD_INPUTS[case]
    path = write(tmp_path / "input.csv")
    run = run_flow(emulator, flow_params(bucket, path, "bad-input", **overrides))

    assert run.failed
    for fragment in fragments:
        assert fragment in run.state.message, f"{fragment!r} not in {run.state.message!r}"
    assert not [c for c in run.calls if c["operation"] in ("CreateModelInvocationJob", "InvokeModel")]


def test_a_job_name_prefix_bedrock_would_reject_is_sanitised_and_the_log_says_so(
    prefect_api: str, emulator: Any, bucket: str, tmp_path: Path,
) -> None:
    path = _csv(tmp_path / "input.csv", _topics_frame(100))
    run = run_flow(emulator, flow_params(bucket, path, "_my jobs_2024!"))

    assert run.state.is_completed(), run.state.message
    assert_promises(run, [f"r-{i:05d}" for i in range(100)])
    jobs = assert_submitted_once(run.calls, run.cfg.run_uri, run.cfg.key, run.cfg.aws)
    assert len(jobs) == 1 and next(iter(jobs)).startswith("my-jobs-2024-")
    assert "job_name_prefix '_my jobs_2024!' becomes 'my-jobs-2024'" in run.log_text()


def test_fewer_rows_than_the_job_minimum_are_served_on_demand_not_refused(
    prefect_api: str, emulator: Any, bucket: str, tmp_path: Path,
) -> None:
    path = _csv(tmp_path / "input.csv", _topics_frame(40))
    run = run_flow(emulator, flow_params(bucket, path, "tiny"))

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, [f"r-{i:05d}" for i in range(40)])
    assert output["error_code"].null_count() == 40 and replies_name_their_topic(output)
    operations = [c["operation"] for c in run.calls]
    assert "CreateModelInvocationJob" not in operations and operations.count("InvokeModel") == 40
    assert run.summary["on_demand"] == 40
    assert "on-demand" in run.log_text()


# ----------------------------------------------------------------------------------------- 11. S3 errors


def test_s3_internal_errors_and_slowdown_on_upload_and_download_are_retried(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    path, ids = topics
    faults(s3_error_rate=0.15)  # every S3 call of the flow: shard and snapshot uploads, ledgers, outputs, parts
    run = run_flow(emulator, flow_params(bucket, path, "s3-faults"))
    injected = emulator.stats()["s3_errors"]
    faults()  # the checks below read S3 without faults

    assert run.state.is_completed(), run.state.message
    assert injected.get("InternalError") and injected.get("SlowDown"), injected
    output = assert_promises(run, ids)
    assert output["error_code"].null_count() == output.height and replies_name_their_topic(output)
    assert run.summary["jobs_submitted"] == 4


# ------------------------------------------------------------------------------- 8. killed mid-poll


def _cli_args(params: dict[str, Any]) -> list[str]:
    """The same parameters as flags, so a CLI run and an in-process run share one run key."""
    args: list[str] = []
    for key, value in params.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_a_run_killed_mid_poll_and_started_again_attaches_leaks_no_slot_and_submits_nothing_twice(
    prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str, topics: tuple[Path, list[str]],
) -> None:
    import signal
    import subprocess
    import sys

    from tasks.concurrency import active_slots, limit_name
    from tests.e2e.conftest import REPO, cli_env
    from tests.e2e.helpers import created_jobs, wait_for

    path, ids = topics
    params = flow_params(bucket, path, "killed", max_concurrent_jobs=2)
    key8 = job_stem(params, 1)[:8]
    limit = limit_name(CLAUDE, emulator.region)
    # Jobs of ~10 s, so the kill lands while the first wave is being polled, even on a loaded machine;
    # the control plane throttles.
    faults(time_scale=1e-2, throttle_rate=0.1)
    before = len(emulator.calls())
    child = subprocess.Popen([sys.executable, "-m", "flows.batch_inference", *_cli_args(params)], cwd=REPO,
                             env=cli_env(emulator, prefect_api), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(created_jobs(emulator.calls()[before:], key8)) >= 2 and active_slots(limit) == 2,
                 90, "the first wave's jobs holding both slots")
        child.send_signal(signal.SIGKILL)  # the process dies without a word while they hold them
        child.wait(timeout=30)
    finally:
        child.kill()
    first = created_jobs(emulator.calls()[before:], key8)
    assert active_slots(limit) == 2, "the kill should have left the slots taken (else this proves nothing)"

    faults(throttle_rate=0.1)  # quick jobs again for the second run
    run = run_flow(emulator, params)
    run.calls = emulator.calls()[before:]  # both runs' calls

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)  # includes: no slot left taken
    assert output["error_code"].null_count() == output.height and replies_name_their_topic(output)
    assert run.summary["jobs_attached"] >= len(first) and run.summary["jobs_submitted"] == 4 - len(first)
    assert len(created_jobs(run.calls, key8)) == 4


# ------------------------------------------------------------------------------- 9. cancelled from Prefect


@pytest.fixture
def served(emulator: Any, prefect_api: str, tmp_path: Path) -> Iterator[str]:
    """The flow served by a runner (`flow.serve`) in a child process: the way a run can be cancelled from
    Prefect. A plain-Python run has nobody watching for the Cancelling state; a runner or worker does."""
    import signal
    import subprocess
    import sys

    from tests.e2e.conftest import REPO, cli_env

    name = f"faults-cancel-{uuid.uuid4().hex[:6]}"
    env = cli_env(emulator, prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = (tmp_path / "serve.log").open("w")
    child = subprocess.Popen([sys.executable, str(REPO / "tests" / "e2e" / "serve_flow.py"), name], cwd=REPO,
                             env=env, stdout=log, stderr=log)
    try:
        yield f"bedrock-batch-inference/{name}"  # the runner's and its runs' logs: <tmp_path>/serve.log
    finally:
        log.close()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


@pytest.mark.parametrize("stop_jobs", [True, False], ids=["stop-jobs", "keep-jobs"])
def test_a_run_cancelled_from_prefect_stops_submits_nothing_more_and_keeps_what_finished(
    stop_jobs: bool, prefect_api: str, emulator: Any, faults: Callable[..., None], bucket: str,
    topics: tuple[Path, list[str]], served: str,
) -> None:
    """Cancel means stop: no Create after Cancelling, in-flight jobs stopped, the shard task runs end
    Cancelled (none Failed), the stop messages are in the run's logs, and the results hold every input
    row once: the finished jobs' answers, the rest `cancelled`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from tasks.concurrency import active_slots, limit_name
    from tasks.core.config import config_from_params
    from tests.e2e.helpers import CREATE, created_jobs, wait_for

    path, ids = topics  # four 100-record shards, two slots: two waves
    params = flow_params(bucket, path, "cancelled", max_concurrent_jobs=2, stop_jobs_on_cancel=stop_jobs)
    key8 = job_stem(params, 1)[:8]
    limit = limit_name(CLAUDE, emulator.region)
    # Waves of ~20 s, 16 of them InProgress: the second wave is mid-way when the cancellation arrives (the
    # shard tasks stop their jobs within seconds of Cancelling).
    faults(time_scale=1e-2, record_s=16.0)
    before = len(emulator.calls())

    def statuses() -> dict[str, str]:
        names = created_jobs(emulator.calls()[before:], key8)
        return {j.name: j.status for j in emulator.engine.jobs() if j.name in names}

    with get_client(sync_client=True) as client:
        wait_for(lambda: _deployment_exists(client, served), 60, "the served deployment")
        flow_run = run_deployment(served, parameters=params, timeout=0)

        def second_wave() -> bool:
            """A job of the second wave (created after a slot was freed: its ~30 s ahead) is in progress;
            mapped shards start in no fixed order, so the wave is told by creation order, not shard name."""
            state = client.read_flow_run(flow_run.id).state
            assert not (state and state.is_final()), f"the run ended before the cancel: {state}"
            created, now = list(created_jobs(emulator.calls()[before:], key8)), statuses()
            return len(created) >= 3 and "Completed" in now.values() and now.get(created[-1]) == "InProgress"

        wait_for(second_wave, 150, "a finished job and one of the second wave in progress")
        at_cancel = len(emulator.calls())
        client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the fault test"))
        final = wait_for(lambda: (s := client.read_flow_run(flow_run.id).state) and s.is_final() and s, 60,
                         "the run to be cancelled")
        assert final.is_cancelled(), final
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))

    assert not [c for c in emulator.calls()[at_cancel:] if c["operation"] == CREATE], "a job submitted after Cancelling"
    job_states = {r.name: r.state.type.value for r in task_runs if r.name.startswith("job-")}
    assert "FAILED" not in job_states.values() and "CANCELLED" in job_states.values(), job_states
    stops = {c["jobName"] for c in emulator.calls()[before:] if c["operation"] == "StopModelInvocationJob"}
    assert active_slots(limit) == 0
    if not stop_jobs:
        assert not stops and "Stopped" not in statuses().values(), statuses()  # left running, as asked
        return
    # Nothing orphaned: every job still running was stopped, none is left in flight.
    ended = wait_for(lambda: (now := statuses()) and not set(now.values()) & IN_FLIGHT and now, 30,
                     "the run's jobs to end")
    stopped = {name for name, status in ended.items() if status == "Stopped"}
    assert stopped and stopped <= stops, (ended, stops)  # a stop may also reach a job that just completed
    assert any("run cancelled: job" in log.message for log in logs), [log.message for log in logs][-20:]
    # What finished is kept, the rest is marked: every input row exactly once.
    cfg = config_from_params(params)
    [output] = wait_for(lambda: _output_if_written(cfg), 60, "the cancelled run's results")
    assert_every_row_once(output, ids)
    answered = output.filter(pl.col("error_code").is_null())
    assert answered.height >= 100 and replies_name_their_topic(output)
    assert set(output.filter(pl.col("error_code").is_not_null())["error_code"].to_list()) == {"cancelled"}


def _output_if_written(cfg: Any) -> list[pl.DataFrame] | None:
    from tests.e2e.helpers import read_output

    try:
        return [read_output(cfg.run_uri.rstrip("/") + "/results/", cfg.aws)]
    except FileNotFoundError:  # no results manifest yet
        return None


def _deployment_exists(client: Any, name: str) -> bool:
    try:
        client.read_deployment_by_name(name)
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------------ 12. soak


@pytest.mark.slow  # ~1 min: ~150 Prefect task runs, CPU-bound (see the module docstring)
@pytest.mark.timeout(600)
def test_soak_60_shards_with_every_fault_at_10_percent_answers_every_row_as_a_fault_free_run_would(
    prefect_api: str, emulator: Any, faults: Callable[..., None], local_aws: Any, tmp_path: Path,
) -> None:
    from tasks.aws import client
    from tests.e2e.helpers import joke_answer

    # 60 shards in three waves of 20 (plus resubmissions and repair jobs): at a rate of 10% per fault, the
    # chance that one of the job fates never shows among ~75 jobs is well under 1%, whatever the run key.
    # A fixed bucket and an S3 source give a fixed run key, hence the same seeded fates on every run.
    rows, bucket = 6_000, "faults-soak"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    ids = write_topics(tmp_path / "topics.csv", rows)
    client("s3", local_aws).upload_file(str(tmp_path / "topics.csv"), bucket, "input/topics.csv")
    # Jobs end within a poll at this time scale: poll once a second, or 20 pollers keep a core busy.
    params = flow_params(bucket, tmp_path / "unused", "soak", max_concurrent_jobs=20, max_job_attempts=4,
                         poll_interval_s=1.0)
    del params["input_path"]
    params["s3_uri"] = f"s3://{bucket}/input/topics.csv"
    key8 = job_stem(params, 1)[:8]

    faults(time_scale=1e-5, seed=6, throttle_rate=0.1, s3_error_rate=0.1, job_failure_rate=0.1, expire_rate=0.1,
           partial_rate=0.1, record_error_rate=0.1, retryable_error_share=0.5,
           # An older account's quota of 10 under a limit of 20, others holding all of it for ~3 s from the
           # first Create (their clock starts there): that Create is refused with ServiceQuotaExceededException
           # whatever the timing, the flow backs off, then has the quota of 10 for its 20 slots.
           quota=10, foreign_jobs={CLAUDE: 10}, foreign_job_duration_s=300_000)
    run = run_flow(emulator, params)
    injected = emulator.stats()["s3_errors"]

    assert run.state.is_completed(), run.state.message
    output = assert_promises(run, ids)
    assert run.summary["shards"] == rows // 100
    # Every fault did happen to this run.
    fates = {j.status for j in emulator.engine.jobs() if key8 in j.name and j.name.startswith("soak-")}
    assert {"Completed", "Failed", "Expired", "PartiallyCompleted"} <= fates, fates
    assert any(c["status_code"] == 429 for c in run.calls) and sum(injected.values()) > 0
    assert any(c["operation"] == "CreateModelInvocationJob" and c["status_code"] == 400 for c in run.calls)
    # What is left in error is (almost all) what no retry fixes, and every row that succeeded carries what a
    # fault-free run gives it: the emulator's reply to its own prompt, with that reply's token counts.
    errors = output.filter(pl.col("error_code").is_not_null())
    assert set(errors["error_code"]) <= {"400", "429", "500"}
    assert (errors["error_code"] == "400").sum() >= 0.9 * errors.height
    succeeded = output.filter(pl.col("error_code").is_null())
    assert succeeded.height >= 0.93 * rows  # ~5% of records draw a 400, which no retry fixes
    expected = joke_answer(pl.col("topic"))
    differing = succeeded.filter(pl.any_horizontal(pl.col(c).ne_missing(e) for c, e in expected.items()))
    assert differing.is_empty(), differing.head(3).to_dicts()
