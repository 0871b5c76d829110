"""Prefect settings that must be in place before `prefect` is imported.

A plain-Python run has no Prefect server of its own: Prefect starts an ephemeral one on the local
database. That server has no lease repossessor, so the entry point keeps concurrency leases on disk
(where `tasks.concurrency.reclaim_orphaned_slots` can find the ones a killed run left behind), turns
analytics off (no network here) and gives the server time to start on slow machines.
"""

from __future__ import annotations

import os

FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


def configure_local_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", FILESYSTEM_LEASES)
