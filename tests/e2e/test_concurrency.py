"""The model's concurrency limit on a real Prefect API: a waiting shard takes a freed slot, and stops
waiting when its run is cancelled."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from tasks.concurrency import SlotWaitCancelled, active_slots, ensure_limit, hold_slot

pytestmark = pytest.mark.e2e


def _waiter(limit: str, **kwargs: Any) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    acquired, errors = threading.Event(), []

    def wait() -> None:
        try:
            with hold_slot(limit, task_run_id=None, **{"retry_s": 0.2, **kwargs}):
                acquired.set()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, acquired, errors


def test_a_waiting_shard_takes_the_slot_its_neighbour_frees_at_once(prefect_api: str) -> None:
    limit = f"test-refill-{uuid.uuid4().hex[:8]}"
    ensure_limit(limit, 1)
    with hold_slot(limit, task_run_id=None):
        thread, acquired, errors = _waiter(limit, retry_s=600)  # only a wake-up can make it in time
        assert not acquired.wait(1.0), "the waiter got a slot the limit does not have"
        assert active_slots(limit) == 1
    thread.join(30)
    assert acquired.is_set() and not errors
    assert active_slots(limit) == 0


def test_a_cancelled_run_stops_waiting_for_a_slot_and_takes_none(prefect_api: str) -> None:
    limit = f"test-cancel-{uuid.uuid4().hex[:8]}"
    ensure_limit(limit, 1)
    cancelled = threading.Event()
    with hold_slot(limit, task_run_id=None):
        thread, acquired, errors = _waiter(limit, should_stop=cancelled.is_set)
        cancelled.set()
        thread.join(30)
        assert not acquired.is_set() and [type(e) for e in errors] == [SlotWaitCancelled]
        assert active_slots(limit) == 1  # only the holder's
    assert active_slots(limit) == 0


def test_a_slot_freed_for_one_model_wakes_a_shard_of_that_model(prefect_api: str) -> None:
    """Two models in one process: a slot given back for one goes to a shard of that model (its wake-up is
    that model's), while the other model's shard keeps waiting for its own."""
    first, second = (f"test-model-{name}-{uuid.uuid4().hex[:8]}" for name in ("a", "b"))
    for limit in (first, second):
        ensure_limit(limit, 1)
    with hold_slot(second, task_run_id=None):
        other, other_acquired, other_errors = _waiter(second, retry_s=600)
        with hold_slot(first, task_run_id=None):
            waiter, acquired, errors = _waiter(first, retry_s=600)  # only a wake-up can make it in time
            assert not acquired.wait(1.0)
        waiter.join(30)
        assert acquired.is_set() and not errors
        assert not other_acquired.is_set() and active_slots(second) == 1
    other.join(30)
    assert other_acquired.is_set() and not other_errors
