"""The `assistants` collection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import OperationFailure

from worker.domain.assistants import CONTENT_HASH, KEY, KEY_REF, key_ref, key_refs
from worker.domain.documents import Doc
from worker.store import pages
from worker.store.connection import Store, insert_new
from worker.store.secantus import find_in, insert_in_groups

# The index that held keys before `key_ref`: per tenant, partial. MongoDB can
# use a partial index only for a filter that implies its expression, and the
# test store never plans one; a single-field sparse index serves both alike.
OLD_KEY_INDEX = "tenant_1_provisioning_key_1"

# How long a deleted assistant's place in the list is kept: a list cursor naming
# it pages on from there (the delete-while-listing loop of the OpenAI SDK) for
# this long; after it, the cursor is unknown again.
TOMBSTONE_SECONDS = 7 * 24 * 3600
# What a tombstone keeps: the assistant's place in the (created_at, _id) order.
PLACE = {"id": 1, "tenant": 1, "created_at": 1}


def ensure_indexes(store: Store) -> None:
    store.assistants.create_index("id", unique=True)
    store.assistants.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )
    # Provisioning keys, unique per tenant (the ref holds the tenant). Only
    # keyed assistants are in it, so plain creates pay nothing, and deleting an
    # assistant frees its key.
    _give_keys_refs(store)
    store.assistants.create_index(KEY_REF, unique=True, sparse=True)
    # A tombstone's `_id` is its assistant's; it is found by tenant and id.
    store.tombstones.create_index([("tenant", ASCENDING), ("id", ASCENDING)])
    store.tombstones.create_index("deleted_at", expireAfterSeconds=TOMBSTONE_SECONDS)


def _bury(store: Store, places: list[Doc]) -> None:
    """Keep where these assistants were: written before a delete answers, so a
    cursor the client read on a page before deleting its object still pages on."""
    now = datetime.now(UTC).replace(tzinfo=None)
    insert_new(store.tombstones, [{**place, "deleted_at": now} for place in places])


# What is read of a keyed assistant to plan a line or answer it unchanged: its
# `_id`, id, creation time and content hash (not its content).
KEYED_VIEW = {"id": 1, KEY: 1, "created_at": 1, CONTENT_HASH: 1}


def keyed(
    store: Store, tenant: str, keys: Iterable[str], projection: Doc | None = KEYED_VIEW
) -> dict[str, Doc]:
    """The tenant's assistants with these provisioning keys, by key: a lookup
    of exactly those keys in the key index, whatever else the tenant keyed."""
    refs = sorted({key_ref(tenant, key) for key in keys if key})
    mine = {"tenant": tenant}
    view = None if projection is None else {**projection, KEY: 1}
    found = find_in(store.assistants, KEY_REF, refs, view, where=mine)
    return {doc[KEY]: doc for doc in found}


def may_be_id(name: str) -> bool:
    return name.startswith("asst_")


def find_named(
    store: Store, tenant: str, names: list[str], projection: Doc | None = None
) -> dict[str, Doc]:
    """The tenant's assistants an apply line names: by provisioning key, or else
    by id; each name mapped to its assistant."""
    named = keyed(store, tenant, names, projection)
    ids = sorted({name for name in names if name not in named and may_be_id(name)})
    mine = {"tenant": tenant}
    for doc in find_in(store.assistants, "id", ids, projection, where=mine):
        named[doc["id"]] = doc
    return named


# What an apply line needs to know of an assistant whose content hash it can
# compare: reading whole documents costs SecantusDB most of a chunk's time.
APPLY_VIEW = {
    "id": 1,
    "tenant": 1,
    "created_at": 1,
    "job_id": 1,
    "applied_by": 1,
    CONTENT_HASH: 1,
}


def find_mine(
    store: Store, tenant: str, ids: list[str], projection: Doc | None = None
) -> dict[str, Doc]:
    """The tenant's assistants with these ids, by id."""
    if not ids:
        return {}
    found = find_in(store.assistants, "id", ids, projection, where={"tenant": tenant})
    return {doc["id"]: doc for doc in found}


def set_content(store: Store, updates: list[tuple[Any, Doc]]) -> set[Any]:
    """Set assistants, each `(_id, fields)`, to exactly these fields; returns the
    `_id`s that were not found (deleted meanwhile: nothing is brought back)."""
    if not updates:
        return set()
    ops = [UpdateOne({"_id": oid}, _set_literally(fields)) for oid, fields in updates]
    written = store.assistants.bulk_write(ops, ordered=False)
    if written.matched_count == len(ops):
        return set()
    ids = [oid for oid, _ in updates]
    return set(ids) - {
        doc["_id"] for doc in store.assistants.find({"_id": {"$in": ids}}, {"_id": 1})
    }


def iter_all(store: Store, tenant: str) -> Iterator[Doc]:
    """Every assistant of the tenant in creation order, a batch in memory at a time."""
    order = [("created_at", ASCENDING), ("_id", ASCENDING)]
    yield from store.assistants.find({"tenant": tenant}, sort=order, batch_size=500)


def iter_keyed(store: Store, tenant: str) -> Iterator[Doc]:
    """All the tenant's assistants that carry a provisioning key (what a prune
    may delete): their `_id`, id and key, one range of the key index."""
    low, high = key_refs(tenant)
    yield from store.assistants.find(
        {KEY_REF: {"$gte": low, "$lt": high}, "tenant": tenant},
        {"id": 1, KEY: 1},
        batch_size=1000,
    )


def _give_keys_refs(store: Store) -> None:
    """Once, where keys were held by the old index: give each keyed assistant
    its `key_ref` (the same string `key_ref` makes), then drop that index. Idempotent,
    so processes starting together may all run it."""
    if OLD_KEY_INDEX not in store.assistants.index_information():
        return
    store.assistants.update_many(
        {KEY: {"$type": "string"}, KEY_REF: {"$exists": False}},
        [
            {
                "$set": {
                    KEY_REF: {
                        "$concat": [
                            {"$toString": {"$strLenCP": "$tenant"}},
                            ":",
                            "$tenant",
                            "/",
                            f"${KEY}",
                        ]
                    }
                }
            }
        ],
    )
    with contextlib.suppress(OperationFailure):  # another process dropped it first
        store.assistants.drop_index(OLD_KEY_INDEX)


def delete_by_oids(store: Store, oids: list[Any]) -> None:
    if oids:
        _bury(store, list(find_in(store.assistants, "_id", oids, PLACE)))
        store.assistants.delete_many({"_id": {"$in": oids}})


def insert(store: Store, docs: list[Doc]) -> list[Doc]:
    """Insert the assistants; returns the ones whose `_id` was stored already."""
    existing = insert_in_groups(store.assistants, docs)
    return [doc for i, doc in enumerate(docs) if i in existing]


def find_by_ids(store: Store, ids: list[Any]) -> list[Doc]:
    return list(find_in(store.assistants, "_id", ids))


def get(store: Store, tenant: str, assistant_id: str) -> Doc | None:
    return store.assistants.find_one({"id": assistant_id, "tenant": tenant})


def exists(store: Store, tenant: str, assistant_id: str) -> bool:
    found = store.assistants.find_one({"id": assistant_id, "tenant": tenant}, {"_id": 1})
    return found is not None


def delete(store: Store, tenant: str, assistant_id: str) -> bool:
    gone = store.assistants.find_one_and_delete({"id": assistant_id, "tenant": tenant}, PLACE)
    if gone is None:
        return False
    _bury(store, [gone])
    return True


def find_by_public_ids(store: Store, assistant_ids: list[str]) -> list[Doc]:
    """The assistants with these ids, of any tenant (callers check the tenant)."""
    return list(find_in(store.assistants, "id", assistant_ids))


def delete_by_public_ids(store: Store, assistant_ids: list[str]) -> None:
    if assistant_ids:
        _bury(store, list(find_in(store.assistants, "id", assistant_ids, PLACE)))
        store.assistants.delete_many({"id": {"$in": assistant_ids}})


def _set_literally(fields: Doc) -> list[Doc]:
    """An update pipeline that sets `fields` to exactly these values.

    `$literal` keeps keys such as "$where" and strings such as "$x" from being
    read as operators or field paths; a tree that is set drops its legacy
    `*_json` field.
    """
    stages: list[Doc] = [{"$set": {name: {"$literal": value} for name, value in fields.items()}}]
    legacy = [f"{name}_json" for name in ("tools", "metadata") if name in fields]
    if CONTENT_HASH not in fields:  # a change of the content the hash no longer describes
        legacy.append(CONTENT_HASH)
    if legacy:
        stages.append({"$unset": legacy})
    return stages


def update(store: Store, changes: list[tuple[str, str, Doc]]) -> None:
    """Set fields of assistants, each `(tenant, assistant id, fields)`; a missing
    assistant stays missing (no upsert: a change never brings one back)."""
    ops = [
        UpdateOne({"id": assistant_id, "tenant": tenant}, _set_literally(fields))
        for tenant, assistant_id, fields in changes
        if fields
    ]
    if ops:
        store.assistants.bulk_write(ops, ordered=False)


def legacy_shaped(store: Store, limit: int) -> list[Doc]:
    """Assistants still stored with `tools_json` / `metadata_json`."""
    query = {"$or": [{"tools_json": {"$exists": True}}, {"metadata_json": {"$exists": True}}]}
    return list(store.assistants.find(query, limit=limit))


def rewrite(store: Store, rewrites: list[tuple[Doc, Doc]]) -> int:
    """Replace legacy fields with native ones, `(document as read, native fields)`;
    each only if the document is as read. Returns how many were rewritten."""
    ops = [
        UpdateOne(
            {
                "_id": doc["_id"],
                "tools_json": doc.get("tools_json", {"$exists": False}),
                "metadata_json": doc.get("metadata_json", {"$exists": False}),
            },
            _set_literally(fields),
        )
        for doc, fields in rewrites
    ]
    if not ops:
        return 0
    return store.assistants.bulk_write(ops, ordered=False).modified_count


class UnknownCursor(LookupError):
    """An `after` or `before` id that names no assistant of the tenant, nor one
    deleted within TOMBSTONE_SECONDS."""

    def __init__(self, name: str, value: str) -> None:
        super().__init__(f"{name}={value}")
        self.name = name
        self.value = value


def list_page(
    store: Store,
    tenant: str,
    *,
    limit: int,
    order: str,
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[Doc], bool]:
    """A page ordered by (created_at, _id) and whether more follow in its direction.

    `after` continues in the list's own order, `before` goes back against it.
    A cursor naming an assistant deleted since pages on from where it was.
    Raises UnknownCursor for a cursor id the tenant does not have.
    """
    anchors: dict[str, Doc] = {}
    for name, cursor_id in (("after", after), ("before", before)):
        if cursor_id is None:
            continue
        anchor = _place(store, tenant, cursor_id)
        if anchor is None:
            raise UnknownCursor(name, cursor_id)
        anchors[name] = anchor
    return pages.window(
        store.assistants,
        {"tenant": tenant},
        ascending=order == "asc",
        limit=limit,
        after=anchors.get("after"),
        before=anchors.get("before"),
    )


def _place(store: Store, tenant: str, assistant_id: str) -> Doc | None:
    """Where the assistant is in the list, or was if it is deleted."""
    named = {"id": assistant_id, "tenant": tenant}
    found = store.assistants.find_one(named, {"created_at": 1})
    return found if found is not None else store.tombstones.find_one(named, {"created_at": 1})
