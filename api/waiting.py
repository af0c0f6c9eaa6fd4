"""`Prefer: wait=N`: hold a request until its job finishes, without polling the store.

One pub/sub listener per process hears the ids of finished jobs, and the job
itself for a single create. A waiter registers before the job can finish
unseen (before a create is stored, or before a job is read), so no finish is
missed; when the listener loses Redis it wakes every waiter to read again,
for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from worker.telemetry.stages import Stages

log = logging.getLogger(__name__)


Job = dict[str, Any]
Read = Callable[[], Job | None]


class _Messages(Protocol):
    """What the listener uses of redis-py's `PubSub`, whose `get_message` has no annotations."""

    def subscribe(self, *channels: str) -> Any: ...
    def get_message(
        self, ignore_subscribe_messages: bool = ..., timeout: float = ...
    ) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


class _Waiter:
    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.job: Job | None = None  # the finished job, when the worker sent it along


class Expected:
    """A job some request waits for, registered with the listener until closed."""

    def __init__(self, listener: FinishedListener, job_id: str) -> None:
        self._listener = listener
        self.job_id = job_id
        self._waiter = _Waiter()

    def __enter__(self) -> Expected:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._listener._forget(self.job_id, self._waiter)

    def until(
        self,
        seconds: float,
        read: Read,
        finished: Callable[[Job], bool],
        stages: Stages | None = None,
        *,
        read_first: bool = False,
    ) -> Job | None:
        """Wait up to `seconds` for the job to finish; the job as it is then.
        With `read_first`, the job is read before any wait (a finish from the
        moment it was expected still wakes this)."""
        stages = stages or Stages()
        deadline = time.monotonic() + seconds
        look = read_first
        while True:
            if look:
                job = read()
                stages.lap("read")
                if job is None or finished(job):
                    return job
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._listener.ending:
                job = read()  # as it is at the deadline
                stages.lap("read")
                return job
            # Without a subscription, poll slowly rather than miss the finish.
            subscribed = self._listener._subscribed.is_set()
            woken = self._waiter.event.wait(remaining if subscribed else min(remaining, 0.5))
            self._waiter.event.clear()
            stages.lap("wait")
            if self._waiter.job is not None:
                return self._waiter.job
            look = woken or not subscribed


class FinishedListener:
    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._subscribed = threading.Event()
        self._closed = threading.Event()
        # Set when the process stops: waits answer at once (`end_waits`).
        self._ending = threading.Event()
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
        while not self._closed.is_set():
            pubsub: _Messages = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._subscribed.set()
                self._wake_all()  # anything published while we were away
                while not self._closed.is_set():
                    # A bounded wait, so that close() is seen within a second.
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._wake(decode(message["data"]))
            except Exception:
                log.warning("finished-job listener lost Redis; reconnecting", exc_info=True)
            finally:
                self._subscribed.clear()
                self._wake_all()
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._closed.wait(0.5)

    def close(self) -> None:
        """Stop listening (waiters still waiting read the store once more)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        self._client.close()

    @property
    def ending(self) -> bool:
        """The process is stopping (`end_waits`): waits answer at once."""
        return self._ending.is_set()

    def end_waits(self) -> None:
        """The process is stopping: every request held by a wait answers now, with
        its job as it is, and later ones do not wait. A graceful stop is then
        not held for as long as the longest wait (`max_wait_seconds`)."""
        self._ending.set()
        self._wake_all()

    def _wake(self, jobs: dict[str, Job | None]) -> None:
        with self._lock:
            for job_id, job in jobs.items():
                for waiter in self._waiters.get(job_id, ()):
                    waiter.job = job
                    waiter.event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter.event.set()

    def _forget(self, job_id: str, waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def expect(self, job_id: str) -> Expected:
        """Listen for the job's finish from now on: register before the job can
        finish (before it is stored, or before it is read), so no finish is missed."""
        self._start()
        expected = Expected(self, job_id)
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(expected._waiter)
        return expected

    def wait(
        self,
        job_id: str,
        seconds: float,
        read: Read,
        finished: Callable[[Job], bool],
        stages: Stages | None = None,
    ) -> Job | None:
        """Read the job, waiting up to `seconds` for it to finish."""
        with self.expect(job_id) as expected:
            return expected.until(seconds, read, finished, stages, read_first=True)


def decode(data: bytes) -> dict[str, Job | None]:
    """A finished-jobs message: a JSON object of job ids (with the job, or null),
    or the plain space-separated ids that older workers publish."""
    text = data.decode()
    if text.startswith("{"):
        jobs: dict[str, Job | None] = json.loads(text)
        return jobs
    return dict.fromkeys(text.split())


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
