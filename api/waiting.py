"""`Prefer: wait=N`: hold a request until its job finishes, without polling the store.

One pub/sub listener per process hears the ids of finished jobs. A waiter
registers before it reads the job, so a finish published between the read
and the wait is not missed; when the listener loses Redis it wakes every
waiter to read again, for the same reason.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


class FinishedListener:
    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="finished-listener", daemon=True
                )
                self._thread.start()
        self._subscribed.wait(timeout=2)

    def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                self._wake_all()  # anything published while we were away
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake(message["data"].decode().split())
            except Exception:
                log.warning("finished-job listener lost Redis; reconnecting", exc_info=True)
            finally:
                self._subscribed.clear()
                self._wake_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
            time.sleep(0.5)

    def _wake(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                for event in self._waiters.get(job_id, ()):
                    event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def wait(
        self,
        job_id: str,
        seconds: float,
        read: Callable[[], dict[str, Any] | None],
        finished: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any] | None:
        """Read the job, waiting up to `seconds` for it to finish."""
        self._start()
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            deadline = time.monotonic() + seconds
            while True:
                job = read()
                if job is None or finished(job):
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return job
                # Without a subscription, poll slowly rather than miss the finish.
                event.wait(remaining if self._subscribed.is_set() else min(remaining, 0.5))
                event.clear()
        finally:
            with self._lock:
                events = self._waiters.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[job_id]


def parse_prefer(values: list[str], limit: int) -> int | None:
    """The wait in seconds that `Prefer` asks for (RFC 7240), capped at `limit`;
    None when it asks for none.

    Preferences are comma-separated, within one header or across several; what
    follows a `;` (preference parameters) is ignored, names are case-insensitive
    and the value may be quoted. As RFC 7240 section 2 says, when a preference
    is given more than once only its first instance counts: `wait=5, wait=10`
    waits 5 s. `wait` takes delta-seconds, plain ASCII digits; a first `wait`
    whose value is not that (`wait=abc`, `wait=+5`, `wait=1e9`) is ignored as an
    unrecognized preference is, and the later ones with it. One leniency: a
    negative whole number (`wait=-1`) is taken as 0, an answer without waiting
    that still says `Preference-Applied: wait=0`.
    """
    for value in values:
        for preference in value.split(","):
            name, _, arg = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() == "wait":
                return _seconds(arg.strip().removeprefix('"').removesuffix('"'), limit)
    return None


def _seconds(text: str, limit: int) -> int | None:
    negative = text.startswith("-")
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        return None
    if negative:
        return 0
    digits = digits.lstrip("0") or "0"
    # Longer than any limit (and than int()'s own digit limit): the limit.
    return limit if len(digits) > len(str(limit)) else min(int(digits), limit)
