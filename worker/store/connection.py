"""The MongoDB store: one client per process, made after fork."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ExecutionTimeout
from pymongo.write_concern import WriteConcern

from worker.domain.documents import Doc
from worker.settings import Settings

DUPLICATE_KEY = 11000


def insert_new(collection: Collection[Doc], docs: list[Doc]) -> set[int]:
    """Insert what is not there yet; returns the indexes of `docs` that were.

    The insert is unordered, so one duplicate does not stop the rest; any
    other write error is raised.
    """
    if not docs:
        return set()
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details["writeErrors"]
        if any(err["code"] != DUPLICATE_KEY for err in errors):
            raise
        return {err["index"] for err in errors}
    return set()


# For the write after which a client is told "accepted" (202): acknowledged
# only once it is in the journal, which also holds every earlier write of the
# request. An acknowledged write that is not yet journaled is lost if the
# store crashes right after it (mongod's default on a standalone node).
JOURNALED = WriteConcern(j=True)


@dataclass(frozen=True)
class Store:
    client: MongoClient[Doc]
    db: Database[Doc]
    # Long reads (result streams, exports) in flight at once: see stream_slot.
    stream_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(16), compare=False, repr=False
    )
    slot_wait_seconds: float = 5.0

    @classmethod
    def connect(
        cls, settings: Settings, timeout_ms: int | None = None, deadline_ms: int | None = None
    ) -> Store:
        # A short server-selection timeout turns a store outage into a fast
        # error (503 at the edge, a retry in a worker) instead of a 30 s hang.
        # `deadline_ms` (the edge's): every operation, waiting for a pooled
        # connection included, ends within it (pymongo's timeoutMS), so a store
        # that hangs or a pool that streams hold answers an error, not a wait.
        timeout = timeout_ms if timeout_ms is not None else settings.store_timeout_ms
        options: dict[str, Any] = {}
        if deadline_ms:
            options["timeoutMS"] = deadline_ms
        client: MongoClient[Doc] = MongoClient(
            settings.mongodb_uri,
            serverSelectionTimeoutMS=timeout,
            connectTimeoutMS=timeout,
            tz_aware=False,
            **options,
        )
        return cls(
            client=client,
            db=client[settings.database_name],
            stream_slots=threading.BoundedSemaphore(max(1, settings.stream_store_slots)),
            slot_wait_seconds=(deadline_ms or settings.store_deadline_ms) / 1000,
        )

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """One of the few slots for a page of a long read (a result stream's, an
        export's): however many streams are open, they hold at most that many of
        the client's pooled connections, and the rest stay free for the short
        reads and writes (auth, creates) that would otherwise queue behind them.
        Waiting for a slot ends by the deadline, as a store operation does."""
        if not self.stream_slots.acquire(timeout=self.slot_wait_seconds):
            raise ExecutionTimeout("every store slot for long reads is busy")
        try:
            yield
        finally:
            self.stream_slots.release()

    @property
    def jobs(self) -> Collection[Doc]:
        return self.db["jobs"]

    @property
    def batches(self) -> Collection[Doc]:
        return self.db["batches"]

    @property
    def assistants(self) -> Collection[Doc]:
        return self.db["assistants"]

    @property
    def tombstones(self) -> Collection[Doc]:
        """Where deleted assistants were in their list, for cursors naming them."""
        return self.db["assistant_tombstones"]

    @property
    def tenants(self) -> Collection[Doc]:
        return self.db["tenants"]

    @property
    def api_keys(self) -> Collection[Doc]:
        return self.db["api_keys"]

    @property
    def idempotency(self) -> Collection[Doc]:
        return self.db["idempotency_keys"]

    @property
    def deliveries(self) -> Collection[Doc]:
        return self.db["webhook_deliveries"]

    def journaled(self, name: str) -> Collection[Doc]:
        """A collection whose writes wait for the journal (see JOURNALED)."""
        return self.db.get_collection(name, write_concern=JOURNALED)

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        self.client.close()
