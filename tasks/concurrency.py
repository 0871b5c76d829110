"""Bedrock's in-flight job quota as a Prefect global concurrency limit.

One limit per model and region, shared by every flow run and worker. A shard's task holds one slot from
submission until its job is terminal. Prefect gives a slot back when its lease expires only on a real
server (the repossessor); the ephemeral API of a plain-Python run has none, so a killed local run would
keep its slots forever. `reclaim_orphaned_slots` closes that gap: each flow process holds an OS lock on a
file named after its flow run for as long as it lives, and a lease whose holder's process no longer holds
that lock (or whose lease has expired) is released.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.settings.context import get_current_settings
from prefect.types._concurrency import ConcurrencyLeaseHolder

log = logging.getLogger(__name__)

# How often a task waiting for a slot asks for one freed by another process (see hold_slot).
SLOT_RETRY_S = 5.0
_slot_freed: dict[str, threading.Condition] = {}  # per limit: a wake-up goes to a task of the same model
_slot_freed_lock = threading.Lock()
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
_live_files: dict[str, IO[str]] = {}


class _SlotsBusyIsNotAnError(logging.Filter):
    """Prefect's slot service logs every refused acquisition (HTTP 423: all slots taken) at ERROR, though
    waiting for a slot is the limit working as meant. `hold_slot` sees the same failure and waits (or
    raises anything else), so the service's line is demoted to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.ERROR and str(record.msg).startswith("Service %r failed to process item")
                and record.args and "ConcurrencySlotAcquisition" in str(record.args[0])):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("prefect._internal.concurrency").addFilter(_SlotsBusyIsNotAnError())


def limit_name(model_id: str, region: str) -> str:
    """`bedrock-batch/us-east-1/anthropic.claude-3-haiku...`: one quota per model per region."""
    model = re.sub(r"[^a-zA-Z0-9.\-:]", "-", model_id.rsplit("/", 1)[-1])
    return f"bedrock-batch-{region}-{model}"[:120]


def ensure_limit(name: str, slots: int) -> None:
    """Create the limit, or set its size: `strict=True` acquisition then never runs unthrottled."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def _freed(name: str) -> threading.Condition:
    with _slot_freed_lock:
        return _slot_freed.setdefault(name, threading.Condition())


def waiting_tasks(slots: int) -> int:
    """Shard tasks to keep waiting in `hold_slot` beyond those holding a slot: how many refill at once.

    Each asks the Prefect API every SLOT_RETRY_S (a slot freed in this process wakes one at once), so
    not one per slot: half the slots, which covers a wave of balanced jobs ending together.
    """
    return max(2, slots // 2)


class SlotWaitCancelled(Exception):
    """The run was cancelled while its task waited for a slot: nothing was submitted."""


@contextmanager
def hold_slot(
    name: str,
    *,
    task_run_id: UUID | None,
    lease_s: float = 900,
    retry_s: float = SLOT_RETRY_S,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold one slot of `name` with a renewed lease; while all are taken, wait for one to be freed.

    Prefect's own wait sleeps for the server's Retry-After, which is the limit's average slot occupancy
    capped at 30 s: with jobs that run for hours, a freed slot would sit empty for up to 30 s. Here a
    slot given back in this process wakes one waiting task at once; slots freed elsewhere (other runs,
    other workers) are found by asking again every `retry_s` seconds. `on_wait` is called once, when
    the first attempt finds every slot taken.
    """
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run_id) if task_run_id else None
    freed = _freed(name)
    acquired = False
    try:
        with ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(concurrency(
                        name, occupy=1, strict=True, lease_duration=lease_s, holder=holder,
                        raise_on_lease_renewal_failure=False, max_retries=0,
                    ))
                    acquired = True
                    break
                except Exception as err:  # Prefect wraps the 423 (slots taken) of its HTTP call
                    cause = err.__cause__
                    if not (isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423):
                        raise
                    if should_stop():
                        raise SlotWaitCancelled(f"cancelled while waiting for a slot of {name}") from None
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    with freed:
                        freed.wait(min(retry_s, float(cause.response.headers.get("Retry-After", retry_s))))
            yield
    finally:
        if acquired:  # given back (the context has exited): let one task waiting for this limit take it
            with freed:
                freed.notify()


def _live_dir() -> Path:
    return Path(get_current_settings().home) / "bedrock-batch-flows" / "live"


def mark_process_alive(flow_run_id: UUID | str) -> None:
    """Hold an exclusive OS lock named after this flow run until the process exits (even by SIGKILL)."""
    key = str(flow_run_id)
    if key in _live_files:
        return
    path = _live_dir() / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _live_files[key] = handle


def _is_alive(flow_run_id: UUID | str) -> bool:
    path = _live_dir() / f"{flow_run_id}.lock"
    if str(flow_run_id) in _live_files:
        return True
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    path.unlink(missing_ok=True)
    return False


def reclaim_orphaned_slots(name: str) -> int:
    """Release slots of `name` held by dead local processes or by expired leases; return how many.

    Works where the leases are stored on this machine's disk (the filesystem lease storage, which the
    plain-Python entry point selects); elsewhere the server's repossessor does this job.
    """
    if get_current_settings().server.concurrency.lease_storage != FILESYSTEM_LEASES:
        return 0
    return asyncio.run(_reclaim(name))


def release_run_slots(name: str, flow_run_id: UUID | str) -> int:
    """Release the slots of `name` held by task runs of `flow_run_id` (a cancelled or crashed run); return
    how many. The runner kills a cancelled run's process, and nothing else would give its slots back before
    their leases expire. Local (filesystem) lease storage only, like `reclaim_orphaned_slots`."""
    if get_current_settings().server.concurrency.lease_storage != FILESYSTEM_LEASES:
        return 0
    return asyncio.run(_reclaim(name, of_flow_run=UUID(str(flow_run_id))))


async def _reclaim(name: str, of_flow_run: UUID | None = None) -> int:
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    storage = ConcurrencyLeaseStorage()
    if not storage.storage_path.exists():
        return 0
    released = 0
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except Exception:  # no such limit yet: nothing to reclaim
            return 0
        lease_ids = set(await storage.read_expired_lease_ids(limit=1000))
        lease_ids |= set(await _all_active(storage))
        for lease_id in lease_ids:
            lease = await storage.read_lease(lease_id)
            if lease is None or limit.id not in lease.resource_ids:
                continue
            if not await (_held_by(client, lease, of_flow_run) if of_flow_run else _orphaned(client, lease)):
                continue
            try:
                await client.release_concurrency_slots_with_lease(lease_id)
                released += 1
            except Exception as err:  # already released by someone else
                log.debug("could not release lease %s: %s", lease_id, err)
    if released:
        log.warning("released %d concurrency slot(s) of %s left by a run that died", released, name)
    return released


async def _all_active(storage: Any) -> list[UUID]:
    out: list[UUID] = []
    while batch := await storage.read_active_lease_ids(limit=100, offset=len(out)):
        out.extend(batch)
        if len(batch) < 100:
            break
    return out


async def _held_by(client: Any, lease: Any, flow_run_id: UUID) -> bool:
    holder = lease.metadata.holder if lease.metadata else None
    if holder is None or holder.type != "task_run":
        return False
    try:
        task_run = await client.read_task_run(holder.id)
    except Exception:
        return False
    return task_run.flow_run_id == flow_run_id


async def _orphaned(client: Any, lease: Any) -> bool:
    from datetime import UTC, datetime

    if lease.expiration <= datetime.now(UTC):
        return True
    holder = lease.metadata.holder if lease.metadata else None
    if holder is None or holder.type != "task_run":
        return False
    try:
        task_run = await client.read_task_run(holder.id)
    except Exception:
        return True  # a holder the API no longer knows
    return task_run.flow_run_id is not None and not _is_alive(task_run.flow_run_id)
