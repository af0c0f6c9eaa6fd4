"""Group commit: callers that arrive while a write is in flight share the next one.

No timer forms the groups: a lone caller writes at once, alone; under load,
whoever arrives while a group is being written waits for that write to end,
and the first of them then writes everything that gathered in the meantime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# A write returns, for each item of its group, None or the error that item met.
Write = Callable[[list[T]], list[BaseException | None]]


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "item", "lead")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.lead = False


class GroupCommit(Generic[T]):
    def __init__(self, write: Write[T], max_group: int = 100) -> None:
        self._write = write
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: list[_Slot[T]] = []
        self._writing = False

    def submit(self, item: T) -> None:
        """Return once `item` is written with its group, or raise the error it met."""
        slot = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            slot.lead = not self._writing
            self._writing = True
        if not slot.lead:
            slot.done.wait()
        if slot.lead:
            self._lead()
        if slot.error is not None:
            raise slot.error

    def _lead(self) -> None:
        # The leader's own slot is first in the queue: it is in the group it writes.
        with self._lock:
            group, self._queue = self._queue[: self._max], self._queue[self._max :]
        try:
            errors = self._write([slot.item for slot in group])
        except BaseException as exc:  # the whole write failed: every item met it
            errors = [exc] * len(group)
        for slot, error in zip(group, errors, strict=True):
            slot.error = error
            slot.lead = False
        with self._lock:
            if self._queue:
                # The first who gathered meanwhile writes the next group.
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._writing = False
        for slot in group[1:]:
            slot.done.set()
