"""Store reads started early, in the background, for a result needed later."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def read_ahead(read: Callable[[], T]) -> Future[T]:
    """Start `read` now on a thread of its own (a greenlet at the edge, whose
    gevent worker patches threads): the store works on it while the caller goes
    on reading an upload. Its error, if any, is raised by `result()`."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(read)
    finally:
        pool.shutdown(wait=False)
