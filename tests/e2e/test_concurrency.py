"""The model's concurrency limit and each run's cap, on a real Prefect API.

- the limit is the operator's: created at the default only when missing, never resized by a run;
- a run's cap bounds its own slots while other runs take the rest of the limit;
- a waiting shard takes a freed slot at once, and stops waiting when its run is cancelled;
- a dead process's slots come back through the local lease journal (flows/local/leases.py);
- two concurrent flow runs capped at 1 and 6 under an operator's limit of 4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.concurrency import DEFAULT_LIMIT, SlotWaitCancelled, active_slots, ensure_limit, hold_slot

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _limit(name: str) -> tuple[int, int]:
    """(size, slots in use) of the limit, read through the API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_global_concurrency_limit_by_name(name)
    return int(found.limit), int(found.active_slots)


def _waiter(limit: str, hold: threading.Event | None = None,
            **kwargs: Any) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """A shard's thread waiting for a slot; it holds the slot until `hold` is set (if given)."""
    acquired, errors = threading.Event(), []

    def wait() -> None:
        try:
            with hold_slot(limit, task_run_id=None, **{"retry_s": 0.2, **kwargs}):
                acquired.set()
                if hold is not None:
                    hold.wait(60)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, acquired, errors


@pytest.fixture
def fresh_limit(prefect_api: str) -> Iterator[str]:
    name = f"test-limit-{uuid.uuid4().hex[:8]}"
    yield name
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except Exception:
            pass


def _operator(*args: str) -> None:
    """What an operator types: `prefect gcl ...` against the session's API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run([PREFECT, "gcl", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_run_creates_the_limit_at_the_default_only_when_missing_and_never_resizes_it(fresh_limit: str) -> None:
    assert ensure_limit(fresh_limit) == DEFAULT_LIMIT
    assert _limit(fresh_limit) == (DEFAULT_LIMIT, 0)
    _operator("update", fresh_limit, "--limit", "4")
    assert ensure_limit(fresh_limit, default=7) == 4  # the operator's size stands
    assert _limit(fresh_limit) == (4, 0)


def test_a_run_cap_bounds_its_own_slots_while_another_run_takes_the_rest(fresh_limit: str) -> None:
    ensure_limit(fresh_limit, default=4)
    capped = {"run": f"run-a-{fresh_limit}", "cap": 1, "retry_s": 600}  # a wake-up lets its waiter in
    first_in, release_first, holder_done = threading.Event(), threading.Event(), threading.Event()

    def hold_first() -> None:
        with hold_slot(fresh_limit, task_run_id=None, **capped):
            first_in.set()
            release_first.wait(60)
        holder_done.set()

    # Run A: one slot held, a second shard waits for A's cap (not for the model's limit).
    holder = threading.Thread(target=hold_first, daemon=True)
    holder.start()
    assert first_in.wait(30)
    reasons: list[str] = []
    told = threading.Event()
    second, second_in, second_errors = _waiter(
        fresh_limit, **capped, on_wait=lambda reason: (reasons.append(reason), told.set()))
    assert told.wait(30) and "run's own 1 slot" in reasons[0]
    # Run B (cap 6) gets the three slots A leaves of the limit's four, and no more.
    release_b = threading.Event()
    b_in = [_waiter(fresh_limit, hold=release_b, run=f"run-b-{fresh_limit}", cap=6) for _ in range(3)]
    for _, acquired, _ in b_in:
        assert acquired.wait(30)
    assert _limit(fresh_limit) == (4, 4) and not second_in.is_set()
    # A fourth shard of B waits for the model's limit, though B is under its own cap.
    told_b = threading.Event()
    b_reasons: list[str] = []
    fourth, fourth_in, _ = _waiter(fresh_limit, hold=release_b, run=f"run-b-{fresh_limit}", cap=6,
                                   on_wait=lambda reason: (b_reasons.append(reason), told_b.set()))
    assert told_b.wait(30) and f"all slots of {fresh_limit}" in b_reasons[0] and not fourth_in.is_set()
    release_first.set()  # A's slot goes to A's waiter or to B's fourth: either way within both bounds
    assert holder_done.wait(30)
    release_b.set()
    for thread, acquired, errors in [(second, second_in, second_errors), *b_in, (fourth, fourth_in, [])]:
        thread.join(30)
        assert acquired.is_set() and not errors
    assert _limit(fresh_limit) == (4, 0)


def test_a_waiting_shard_takes_the_slot_its_neighbour_frees_at_once(fresh_limit: str) -> None:
    ensure_limit(fresh_limit, default=1)
    with hold_slot(fresh_limit, task_run_id=None):
        told = threading.Event()
        thread, acquired, errors = _waiter(fresh_limit, retry_s=600, on_wait=lambda _: told.set())
        assert told.wait(30), "the waiter never found every slot taken"
        assert not acquired.is_set() and active_slots(fresh_limit) == 1
    thread.join(30)  # woken by the release (its own retry waits for the server's Retry-After)
    assert acquired.is_set() and not errors
    assert active_slots(fresh_limit) == 0


def test_a_cancelled_run_stops_waiting_for_a_slot_and_takes_none(fresh_limit: str) -> None:
    ensure_limit(fresh_limit, default=1)
    cancelled = threading.Event()
    with hold_slot(fresh_limit, task_run_id=None):
        thread, acquired, errors = _waiter(fresh_limit, should_stop=cancelled.is_set)
        cancelled.set()
        thread.join(30)
        assert not acquired.is_set() and [type(e) for e in errors] == [SlotWaitCancelled]
        assert active_slots(fresh_limit) == 1  # only the holder's
    assert active_slots(fresh_limit) == 0


def test_a_slot_freed_for_one_model_wakes_a_shard_of_that_model(prefect_api: str) -> None:
    """Two models in one process: a slot given back for one goes to a shard of that model (its wake-up is
    that model's), while the other model's shard keeps waiting for its own."""
    first, second = (f"test-model-{name}-{uuid.uuid4().hex[:8]}" for name in ("a", "b"))
    for limit in (first, second):
        ensure_limit(limit, default=1)
    with hold_slot(second, task_run_id=None):
        told_other = threading.Event()
        other, other_acquired, other_errors = _waiter(second, retry_s=600, on_wait=lambda _: told_other.set())
        assert told_other.wait(30)
        with hold_slot(first, task_run_id=None):
            told = threading.Event()
            waiter, acquired, errors = _waiter(first, retry_s=600, on_wait=lambda _: told.set())
            assert told.wait(30)
        waiter.join(30)  # only a wake-up can make it in time
        assert acquired.is_set() and not errors
        assert not other_acquired.is_set() and active_slots(second) == 1
    other.join(30)
    assert other_acquired.is_set() and not other_errors


HOLD_A_SLOT = """
import sys, threading
import flows  # installs the lease journal, as every flow process does
from tasks.concurrency import hold_slot
with hold_slot(sys.argv[1], task_run_id=None):
    print("held", flush=True)
    threading.Event().wait()
"""


def test_a_killed_process_slot_comes_back_through_the_local_lease_journal(fresh_limit: str) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.local.leases import FileLeaseJournal

    ensure_limit(fresh_limit, default=2)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT, fresh_limit], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held", child.stderr
        journal = FileLeaseJournal()
        assert journal.reclaim() == 0 and active_slots(fresh_limit) == 1  # alive: its slot stays
        child.kill()
        child.wait(30)
    finally:
        child.kill()
        child.wait(30)
    assert active_slots(fresh_limit) == 1, "nothing but the journal gives a killed holder's slot back here"
    assert journal.reclaim() == 1
    assert active_slots(fresh_limit) == 0
    assert journal.reclaim() == 0  # its journal is gone with it


def _peak_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_peak_overlap_counts_jobs_in_flight_together() -> None:
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(6)]
    assert _peak_overlap([(t[0], t[2]), (t[1], t[3]), (t[2], t[4])]) == 2
    assert _peak_overlap([(t[0], t[1]), (t[1], t[2])]) == 1
    assert _peak_overlap([(t[0], t[5]), (t[1], t[4]), (t[2], t[3])]) == 3


CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatchRole"
SAMPLE = REPO / "samples" / "simplecot_sample.jsonl"  # 300 rows: six 50-record jobs per run


@pytest.fixture
def operator_limit(prefect_api: str, emulator: Any) -> Iterator[str]:
    """The model's limit as an operator sized it: 4 slots (`prefect gcl create || update`, as documented).
    Deleted afterwards, so that later tests of this session find it missing (a run creates it at 20)."""
    from prefect.client.orchestration import get_client

    from tasks.concurrency import limit_name

    name = limit_name(CLAUDE, emulator.region)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            _operator("update", name, "--limit", "4")
        except Exception:
            _operator("create", name, "--limit", "4")
    yield name
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def test_two_concurrent_runs_capped_at_1_and_6_under_a_limit_of_4_keep_every_bound(
    operator_limit: str, emulator: Any, local_aws: Any,
) -> None:
    from prefect.settings import PREFECT_API_URL

    from tasks.aws import client
    from tests.e2e.conftest import cli_env

    bucket = f"caps-{uuid.uuid4().hex[:10]}"
    client("s3", local_aws).create_bucket(Bucket=bucket)
    before = emulator.profile
    emulator.set_profile(before.replace(time_scale=1.5e-3, min_records=50))  # jobs of ~1.5 s
    env = cli_env(emulator, str(PREFECT_API_URL.value()))
    caps = {"capone": 1, "capsix": 6}
    runs = {
        prefix: subprocess.Popen(
            [sys.executable, "-m", "flows.batch_inference", "--input-path", str(SAMPLE),
             "--prompt-id", "question_answering", "--model-id", CLAUDE, "--job-name-prefix", prefix,
             "--output-uri", f"s3://{bucket}/{prefix}", "--role-arn", ROLE, "--max-records-per-job", "50",
             "--min-records-per-job", "50", "--poll-interval-s", "0.5", "--max-concurrent-jobs", str(cap)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for prefix, cap in caps.items()
    }
    samples: list[tuple[int, int]] = []
    try:
        # While they run: the limit read through the API keeps the operator's size and never overflows.
        watch = next(iter(runs.values()))
        while any(run.poll() is None for run in runs.values()):
            samples.append(_limit(operator_limit))
            try:
                watch.wait(timeout=0.1)  # a sampling period, not a synchronisation
            except subprocess.TimeoutExpired:
                pass
            if watch.poll() is not None:
                watch = next((run for run in runs.values() if run.poll() is None), watch)
        outputs = {prefix: run.communicate(timeout=60) for prefix, run in runs.items()}
    finally:
        emulator.set_profile(before)
        for run in runs.values():
            run.kill()
    for prefix, run in runs.items():
        assert run.returncode == 0, outputs[prefix][1][-3000:]
    assert samples and {size for size, _ in samples} == {4}, "a run resized the operator's limit"
    assert max(used for _, used in samples) <= 4
    assert max(used for _, used in samples) >= 2, "the runs never overlapped: this proves nothing"
    assert _limit(operator_limit) == (4, 0)

    # Bedrock's own record of each job: in flight from submitTime to endTime.
    bedrock = client("bedrock", local_aws)
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    for prefix in caps:
        pages = bedrock.get_paginator("list_model_invocation_jobs").paginate(nameContains=prefix)
        jobs = [job for page in pages for job in page["invocationJobSummaries"]]
        assert len(jobs) == 6 and all(job["status"] == "Completed" for job in jobs), jobs
        intervals[prefix] = [(job["submitTime"], job["endTime"]) for job in jobs]
    peaks = {prefix: _peak_overlap(found) for prefix, found in intervals.items()}
    assert peaks["capone"] == 1, peaks  # its cap, though the limit had room for more
    assert 2 <= peaks["capsix"] <= 4, peaks  # above the other run's cap, within the limit
    assert _peak_overlap([*intervals["capone"], *intervals["capsix"]]) <= 4
