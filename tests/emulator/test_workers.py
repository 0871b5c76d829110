"""The processing slots: a job about to write goes before one about to answer, before one about to read."""

from __future__ import annotations

import threading

from emulator.workers import Stage, Workers


def _queued(workers: Workers, **counts: int) -> None:
    """Block until the pool shows these waiting counts (the pool's own condition, not a sleep)."""
    with workers._changed:
        workers._changed.wait_for(
            lambda: all(workers.state()[f"waiting_{k}"] == n for k, n in counts.items()), timeout=10
        )


def test_a_freed_slot_goes_to_the_job_furthest_along():
    workers = Workers(1)
    order: list[Stage] = []

    def job(stage: Stage) -> None:
        with workers.slot(stage):
            order.append(stage)

    with workers.slot(Stage.ANSWER):
        reader = threading.Thread(target=job, args=(Stage.READ,))
        reader.start()
        _queued(workers, read=1)
        writer = threading.Thread(target=job, args=(Stage.WRITE,))
        writer.start()
        _queued(workers, read=1, write=1)
        assert workers.state() == {"size": 1, "busy": 1, "waiting_read": 1, "waiting_answer": 0, "waiting_write": 1}
    reader.join(10)
    writer.join(10)
    assert order == [Stage.WRITE, Stage.READ]
    assert workers.state()["busy"] == 0


def test_growing_the_pool_lets_waiting_jobs_start():
    workers = Workers(1)
    started = threading.Event()

    def job() -> None:
        with workers.slot(Stage.READ):
            started.set()

    with workers.slot(Stage.READ):
        waiter = threading.Thread(target=job)
        waiter.start()
        _queued(workers, read=1)
        workers.resize(2)
        assert started.wait(10)
    waiter.join(10)
