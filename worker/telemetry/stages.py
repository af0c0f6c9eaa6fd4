"""Where one request's time goes: named stages in milliseconds, for its log lines."""

from __future__ import annotations

import time


class Stages:
    """Laps of a stopwatch: each `lap(name)` adds the time since the last lap."""

    __slots__ = ("_last", "ms")

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round(self.ms.get(name, 0.0) + (now - self._last) * 1000, 3)
        self._last = now

    def skip(self) -> None:
        """Start the next lap now, leaving out what passed since the last one."""
        self._last = time.perf_counter()
