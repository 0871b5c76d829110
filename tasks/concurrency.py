"""Bedrock's in-flight job quota as a Prefect global concurrency limit, and each run's own cap within it.

- **The model's limit** (`bedrock-batch-<region>-<model id>`) stands for the account's quota for that
  model in that region, which every run, worker and deployment shares. An operator sizes it
  (`prefect gcl create NAME --limit N`, `prefect gcl update NAME --limit N`); a run creates it at
  `DEFAULT_LIMIT` (Bedrock's default quota) only when it is missing, and never resizes it.
- **A run's cap** (`max_concurrent_jobs`) bounds that run's own jobs in flight: a semaphore per flow run in
  its process (a run's shard tasks all run on the flow's thread pool), so a run capped at 1 never has two
  jobs, whatever the limit's size, and waiting for its own cap costs no API call.

A shard's task holds one slot of each from submission until its job is terminal (`hold_slot`). Only
public Prefect APIs: the lease is taken, renewed and released with the client's lease methods, so its id
is known; a `LeaseJournal` (the local one is `flows/local/leases.py`) may record it, to give back the slots
of a process that died where no server does (the ephemeral server of a plain-Python run has no lease
repossessor).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

log = logging.getLogger(__name__)

# Bedrock's default quota of submitted + in-progress batch jobs per model and region (older accounts: 10).
DEFAULT_LIMIT = 20
# How often a task waiting for a slot asks for one freed by another process (see hold_slot).
SLOT_RETRY_S = 5.0
_slot_freed: dict[str, threading.Condition] = {}  # per limit: a wake-up goes to a task of the same model
_run_caps: dict[str, threading.BoundedSemaphore] = {}
_registry_lock = threading.Lock()


class LeaseJournal(Protocol):
    """Something that records the leases this process holds (see flows/local/leases.py)."""

    def opened(self, lease_id: UUID, limit: str) -> None: ...

    def closed(self, lease_id: UUID) -> None: ...

    def reclaim(self) -> int:
        """Release the leases of holders that died; return how many."""
        ...


_journal: LeaseJournal | None = None


def use_lease_journal(journal: LeaseJournal | None) -> None:
    """Record every lease `hold_slot` takes in `journal` (None: record nothing)."""
    global _journal
    _journal = journal


def limit_name(model_id: str, region: str) -> str:
    """`bedrock-batch-us-east-1-anthropic.claude-3-haiku...`: one quota per model per region."""
    model = re.sub(r"[^a-zA-Z0-9.\-:]", "-", model_id.rsplit("/", 1)[-1])
    return f"bedrock-batch-{region}-{model}"[:120]


def ensure_limit(name: str, default: int = DEFAULT_LIMIT) -> int:
    """Create the limit at `default` slots if it is missing (never resize it); return its size.

    The size is the operator's: `strict` acquisition needs the limit to exist, but a run must not change a
    quota other runs share.
    """
    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(name).limit)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=default))
            log.info("created the concurrency limit %s with %d slots (resize it: prefect gcl update %s "
                     "--limit N)", name, default, name)
        except ObjectAlreadyExists:  # another run created it meanwhile
            pass
        return int(client.read_global_concurrency_limit_by_name(name).limit)


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def waiting_tasks(slots: int) -> int:
    """Shard tasks to keep waiting in `hold_slot` beyond those holding a slot: how many refill at once.

    Each asks the Prefect API every SLOT_RETRY_S (a slot freed in this process wakes one at once), so
    not one per slot: half the slots, which covers a wave of balanced jobs ending together.
    """
    return max(2, slots // 2)


def run_cap(run: str, size: int) -> threading.BoundedSemaphore:
    """The semaphore of run `run` (a flow run id): `size` of its jobs in flight at once in this process."""
    with _registry_lock:
        return _run_caps.setdefault(run, threading.BoundedSemaphore(max(1, size)))


def _freed(name: str) -> threading.Condition:
    with _registry_lock:
        return _slot_freed.setdefault(name, threading.Condition())


class SlotWaitCancelled(Exception):
    """The run was cancelled while its task waited for a slot: nothing was submitted."""


class MissingLimit(RuntimeError):
    """The limit does not exist (deleted while the run went on): acquiring would run unthrottled."""


@contextmanager
def hold_slot(
    name: str,
    *,
    task_run_id: UUID | None,
    run: str | None = None,
    cap: int | None = None,
    lease_s: float = 900,
    retry_s: float = SLOT_RETRY_S,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold one slot of run `run`'s cap (`cap` jobs) and one of the limit `name` until the block exits.

    The run's own slot is taken first, so a run at its cap takes nothing from the shared limit. Prefect's
    own wait sleeps for the server's Retry-After (up to 30 s): with jobs that run for hours a freed slot
    would sit empty that long. Here a slot given back in this process wakes one waiting task at once;
    slots freed elsewhere (other runs, other workers) are found by asking again every `retry_s` seconds.
    `on_wait(reason)` is called once, when the task first has to wait.
    """
    own = run_cap(run, cap) if run is not None and cap else None
    notify = on_wait
    if own is not None and not own.acquire(blocking=False):
        if notify is not None:
            notify(f"the run's own {cap} slot(s) (max_concurrent_jobs) are all in use")
            notify = None
        while not own.acquire(timeout=retry_s):  # a slot the run gives back wakes one waiter at once
            if should_stop():
                raise SlotWaitCancelled(f"cancelled while waiting for one of the run's {cap} slots")
    try:
        with _model_slot(name, task_run_id, lease_s, retry_s, should_stop, notify):
            yield
    finally:
        if own is not None:
            own.release()


@contextmanager
def _model_slot(name: str, task_run_id: UUID | None, lease_s: float, retry_s: float,
                should_stop: Callable[[], bool], on_wait: Callable[[str], None] | None) -> Iterator[None]:
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run_id) if task_run_id else None
    freed = _freed(name)
    while True:
        lease_id, retry_after = _acquire(name, lease_s, holder)
        if lease_id is not None:
            break
        if should_stop():
            raise SlotWaitCancelled(f"cancelled while waiting for a slot of {name}")
        if on_wait is not None:
            on_wait(f"all slots of {name} are in use (the model's quota, shared with other runs)")
            on_wait = None
        with freed:
            freed.wait(max(0.05, min(retry_s, retry_after if retry_after is not None else retry_s)))
    journal = _journal
    if journal is not None:
        journal.opened(lease_id, name)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, lease_s, stop, name), daemon=True,
                               name=f"lease-{lease_id}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=30)
        try:
            release_lease(lease_id)
        except Exception as err:  # the lease expires (or the journal's reclaim frees it): keep the result
            log.warning("could not give back a slot of %s (%s): it returns when its lease expires", name, err)
        else:
            if journal is not None:
                journal.closed(lease_id)
        with freed:  # given back: let one task waiting for this limit take it
            freed.notify()


def _acquire(name: str, lease_s: float, holder: ConcurrencyLeaseHolder | None) -> tuple[UUID | None, float | None]:
    """One attempt: (lease id, None) when a slot was taken, (None, the server's Retry-After) when all are."""
    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=lease_s, holder=holder)
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status == 423:  # Locked: every slot is taken
                return None, _seconds(err.response.headers.get("Retry-After"))
            if status == 429 or status >= 500:  # the API is busy or down: ask again, as for a taken slot
                log.warning("could not ask for a slot of %s (HTTP %d); trying again", name, status)
                return None, None
            raise
        except httpx.TransportError as err:  # the API unreachable for a moment
            log.warning("could not ask for a slot of %s (%s); trying again", name, err)
            return None, None
    body: dict[str, Any] = response.json()
    lease_id = UUID(str(body["lease_id"]))
    if not body.get("limits"):  # the server gave a lease on nothing: the limit is gone
        release_lease(lease_id)
        raise MissingLimit(f"the concurrency limit {name} does not exist: create it with "
                           f"`prefect gcl create {name} --limit {DEFAULT_LIMIT}`")
    return lease_id, None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _renew(lease_id: UUID, lease_s: float, stop: threading.Event, name: str) -> None:
    """Renew the lease at 3/4 of its duration until `stop`; a failed renewal is retried sooner.

    A lease that cannot be renewed (the API away for longer than the lease) does not end the job: the
    slot may be given back by the server meanwhile, which at worst lets one job too many in for a while.
    """
    interval = lease_s * 0.75
    while not stop.wait(interval):
        try:
            with get_client(sync_client=True) as client:
                client.renew_concurrency_lease(lease_id, lease_duration=lease_s)
            interval = lease_s * 0.75
        except Exception as err:
            log.warning("could not renew the lease of a slot of %s (%s); trying again", name, err)
            interval = min(30.0, lease_s / 4)


def release_lease(lease_id: UUID) -> None:
    """Give a lease's slots back (releasing a lease the server no longer has is a no-op)."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def reclaim_orphaned_slots(name: str | None = None) -> int:
    """Release the slots (of any limit, `name` included) of holders that died, as the lease journal knows
    them; return how many. Without a journal this is the server's job: its repossessor frees a slot when
    its lease expires."""
    journal = _journal
    return journal.reclaim() if journal is not None else 0


def release_run_slots(name: str, flow_run_id: UUID | str) -> int:
    """A cancelled run's slots, once the runner has killed its process: those of every holder that died
    (a live process gives its own back when its tasks end)."""
    return reclaim_orphaned_slots(name)
