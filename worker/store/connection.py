"""The MongoDB store: one client per process, made after fork."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from worker.domain.documents import Doc
from worker.settings import Settings

DUPLICATE_KEY = 11000

# SecantusDB checks each document an `$in` finds against the whole list, so n
# documents read by an `$in` of their n values cost n squared comparisons (a
# chunk's 500 assistants: most of the chunk's time). Read in groups of this
# many (`find_in`), they cost n times the group; MongoDB pays a round trip a group.
IN_GROUP = 50


def find_in(
    collection: Collection[Doc], field: str, values: Sequence[Any], projection: Doc | None = None
) -> Iterator[Doc]:
    """The documents whose `field` is one of `values`, read in groups of IN_GROUP."""
    for start in range(0, len(values), IN_GROUP):
        group = list(values[start : start + IN_GROUP])
        yield from collection.find({field: {"$in": group}}, projection)


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

    @classmethod
    def connect(cls, settings: Settings, timeout_ms: int | None = None) -> Store:
        # A short server-selection timeout turns a store outage into a fast
        # error (503 at the edge, a retry in a worker) instead of a 30 s hang.
        timeout = timeout_ms if timeout_ms is not None else settings.store_timeout_ms
        client: MongoClient[Doc] = MongoClient(
            settings.mongodb_uri,
            serverSelectionTimeoutMS=timeout,
            connectTimeoutMS=timeout,
            tz_aware=False,
        )
        return cls(client=client, db=client[settings.database_name])

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
