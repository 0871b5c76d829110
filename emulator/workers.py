"""A small pool of processing slots that serves the jobs furthest along first.

Any number of jobs may be in flight, but only a few at a time should hold a file's worth of frames and
compete for the cores. Among waiting jobs, one about to write its outputs goes before one about to answer,
which goes before one about to read its input: parsed records are turned into outputs and freed before
more input is read, so memory stays bounded by the slots rather than by the quota.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum


class Stage(IntEnum):
    READ = 0
    ANSWER = 1
    WRITE = 2


class Workers:
    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._busy = 0
        self._waiting: Counter[Stage] = Counter()
        self._changed = threading.Condition()

    def resize(self, size: int) -> None:
        with self._changed:
            self._size = max(1, size)
            self._changed.notify_all()

    def state(self) -> dict[str, int]:
        """Slots, slots in use, and waiting holders per stage (for `/_emulator/stats` and tests)."""
        with self._changed:
            waiting = {f"waiting_{s.name.lower()}": self._waiting[s] for s in Stage}
            return {"size": self._size, "busy": self._busy, **waiting}

    def _may_start(self, stage: Stage) -> bool:
        later_waiting = any(n for s, n in self._waiting.items() if s > stage)
        return self._busy < self._size and not later_waiting

    @contextmanager
    def slot(self, stage: Stage) -> Iterator[None]:
        with self._changed:
            self._waiting[stage] += 1
            try:
                self._changed.wait_for(lambda: self._may_start(stage))
            finally:
                self._waiting[stage] -= 1
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()
