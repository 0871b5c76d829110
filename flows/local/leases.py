"""Local only: give back the concurrency slots of flow processes on this machine that died.

A real Prefect server frees a dead holder's slot when its lease expires (its repossessor). The ephemeral
server of a plain-Python run (and the test harness) has none: a killed run would keep its slots of the
model's limit until someone runs `prefect gcl update NAME --active-slots 0`. So every flow process records
the leases it holds in a journal file of its own under `$PREFECT_HOME/bedrock-batch-flows/leases/`, and
holds an exclusive lock on that file for as long as it lives (the OS drops the lock when the process dies,
even by SIGKILL). `reclaim()` (a run's start, a cancelled run's hook) releases, through the public API,
the leases left open in every journal whose lock is free, then deletes it. Releasing a lease the server
no longer has is a no-op, so a reclaim after the repossessor (or a second reclaimer) changes nothing.

One window stays open: a process killed after the server granted a lease and before the journal line
(the HTTP response's few milliseconds) leaves that slot to the server's repossessor, or to `prefect gcl
update`; the API has no way to list a limit's leases by holder, which would close it.

The journal only helps where the server knows the dead process's lease: one server, or servers that
share their lease storage (`flows/local/bootstrap.py` puts a plain-Python run's leases on disk, where the
ephemeral servers of the machine's processes all find them). This module is the only place that deals
with dead local processes; `tasks/concurrency.py` knows only the `LeaseJournal` protocol.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import IO
from uuid import UUID

from prefect.settings.context import get_current_settings

from tasks import concurrency

log = logging.getLogger(__name__)

SUFFIX = ".leases"


def journal_dir() -> Path:
    return Path(get_current_settings().home) / "bedrock-batch-flows" / "leases"


class FileLeaseJournal:
    """This process's leases, one JSON line per lease taken or given back, in a file it keeps locked."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or journal_dir()
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._pid = 0

    def _handle(self) -> IO[str]:
        """The open, locked journal file (created at the first lease; again in a forked child)."""
        if self._file is None or self._pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            # Locked before it gets the name reclaimers look for: they never see it unlocked.
            temporary = self.directory / f".{name}.tmp"
            handle = temporary.open("a+")
            fcntl.flock(handle, fcntl.LOCK_EX)
            temporary.rename(self.directory / f"{name}{SUFFIX}")
            self._file, self._pid = handle, os.getpid()
        return self._file

    def _write(self, entry: dict[str, str]) -> None:
        with self._lock:
            handle = self._handle()
            handle.write(json.dumps(entry) + "\n")
            handle.flush()

    def opened(self, lease_id: UUID, limit: str) -> None:
        self._write({"open": str(lease_id), "limit": limit})

    def closed(self, lease_id: UUID) -> None:
        self._write({"close": str(lease_id)})

    def reclaim(self) -> int:
        """Release the open leases of every journal whose process is gone; return how many."""
        if not self.directory.is_dir():
            return 0
        released = 0
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            with self._lock:
                if self._file is not None and self._pid == os.getpid() and Path(self._file.name) == path:
                    continue  # our own
            released += _reclaim_file(path)
        return released


def _reclaim_file(path: Path) -> int:
    try:
        handle = path.open("r")
    except FileNotFoundError:  # reclaimed by another process meanwhile
        return 0
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its process is alive
        leases: dict[str, str] = {}
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if "open" in entry:
                leases[entry["open"]] = entry.get("limit", "?")
            elif "close" in entry:
                leases.pop(entry["close"], None)
        released = 0
        for lease_id, limit in leases.items():
            try:
                concurrency.release_lease(UUID(lease_id))
                released += 1
                log.warning("gave back a slot of %s held by a run whose process died (%s)", limit, path.stem)
            except Exception as err:  # the API unreachable: keep the journal for the next reclaim
                log.warning("could not give back a slot of %s left by a dead run: %s", limit, err)
                return released
        path.unlink(missing_ok=True)
        return released


_installed: FileLeaseJournal | None = None


def install() -> FileLeaseJournal:
    """Record this process's leases in its journal, and let `tasks.concurrency.reclaim_orphaned_slots`
    release those of dead processes (idempotent)."""
    global _installed
    if _installed is None:
        _installed = FileLeaseJournal()
    concurrency.use_lease_journal(_installed)
    return _installed
