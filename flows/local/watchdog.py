"""A killed plain-Python run takes its helper processes with it.

Prefect starts the ephemeral API server of a plain-Python run as a child process; a SIGKILL of the run
(or a lost terminal) leaves that server running, holding its port and database. `guard_children()`
marks this process's environment with a token (which every process it starts inherits) and starts a
small watchdog that holds the read end of a pipe whose write end only this process has: when this
process dies, however it dies, the watchdog reads end-of-file and terminates every process carrying the
token. Linux only (it reads `/proc/<pid>/environ`); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

GUARD = "BBF_RUN_GUARD"

_WATCHDOG = r"""
import os, signal, sys, time

token = ("BBF_RUN_GUARD=" + sys.argv[1]).encode()
while os.read(sys.stdin.fileno(), 1):
    pass  # blocks until the run is gone (end of file)

def guarded():
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if token in fh.read().split(b"\0"):
                        yield int(entry)
            except OSError:
                continue

for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in list(guarded()):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(3)
"""

_started = False


def guard_children() -> None:
    """Start the watchdog once per process (idempotent)."""
    global _started
    if _started or not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return
    token = uuid.uuid4().hex
    read_end, write_end = os.pipe()  # both non-inheritable: no other child keeps the pipe open
    watchdog_env = {k: v for k, v in os.environ.items() if k != GUARD}
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, token], stdin=read_end, env=watchdog_env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(read_end)
    os.environ[GUARD] = token  # inherited by every process this run starts from now on
    _started = True
    _keep.append(write_end)  # never closed: it closes when this process ends


_keep: list[int] = []
