"""What a process needs to do work: settings, the store, Redis and a sender.

Built once per process, after fork: pymongo, redis-py and kombu clients must
not cross a fork.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import redis

from worker.domain.documents import Doc
from worker.queueing.routes import queue_depths
from worker.queueing.sender import Sender
from worker.settings import Settings
from worker.store.connection import Store

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: Store
    redis: redis.Redis
    # What services keep for as long as this runtime lives (a group commit), so
    # nothing of the kind is a global of the process.
    _shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _shared_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def build(cls, settings: Settings, edge: bool = False) -> Runtime:
        """`edge`: for a process that answers requests, whose every store
        operation has a deadline (STORE_DEADLINE_MS); a worker's do not, since a
        worker retries a task whose store call failed and a long one is no fault."""
        return cls(
            settings=settings,
            store=Store.connect(settings, deadline_ms=settings.store_deadline_ms if edge else None),
            # Every Redis command (the rate limit, the finished-job channel) ends
            # within socket_timeout: a Redis that hangs costs a request this long.
            redis=redis.Redis.from_url(
                settings.redis_url, socket_timeout=5, socket_connect_timeout=2
            ),
        )

    def shared(self, name: str, make: Callable[[], T]) -> T:
        """The one object named `name` for this runtime, made by `make` on first use."""
        with self._shared_lock:
            if name not in self._shared:
                self._shared[name] = make()
            value: T = self._shared[name]
            return value

    @cached_property
    def sender(self) -> Sender:
        return Sender(self.settings)

    @property
    def finished_channel(self) -> str:
        return f"{self.settings.redis_prefix}:finished"

    def publish_finished(self, jobs: dict[str, Doc | None]) -> None:
        """Tell waiting requests (`Prefer: wait`) which jobs just finished. A job
        object sent along (a single create's) spares its waiter a read of the store."""
        if jobs:
            self.redis.publish(self.finished_channel, json.dumps(jobs, ensure_ascii=False))

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a Celery queue, all its lanes (not counting those a
        worker prefetched)."""
        return queue_depths(self.redis, self.settings.redis_prefix, [queue])[queue]

    def close(self) -> None:
        self.store.close()
        self.redis.close()
        if "sender" in self.__dict__:
            self.sender.close()


_per_process: dict[int, Runtime] = {}


def for_process(settings: Settings) -> Runtime:
    """This process's runtime, made on first use after any fork: for Celery's
    tasks, which have no application object to hold one."""
    pid = os.getpid()
    runtime = _per_process.get(pid)
    if runtime is None:
        runtime = _per_process[pid] = Runtime.build(settings)
    return runtime
