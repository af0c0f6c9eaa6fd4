"""The `assistants` collection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne

from worker.domain.assistants import CONTENT_HASH, KEY
from worker.domain.documents import Doc
from worker.store import pages
from worker.store.connection import Store, find_in, insert_new

KEY_INDEX = [("tenant", ASCENDING), (KEY, ASCENDING)]

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
    # Provisioning keys: unique per tenant. Only keyed assistants are in it, so
    # plain creates pay nothing, and deleting an assistant frees its key.
    store.assistants.create_index(
        KEY_INDEX, unique=True, partialFilterExpression={KEY: {"$type": "string"}}
    )
    # A tombstone's `_id` is its assistant's; it is found by tenant and id.
    store.tombstones.create_index([("tenant", ASCENDING), ("id", ASCENDING)])
    store.tombstones.create_index("deleted_at", expireAfterSeconds=TOMBSTONE_SECONDS)


def _bury(store: Store, places: list[Doc]) -> None:
    """Keep where these assistants were: written before a delete answers, so a
    cursor the client read on a page before deleting its object still pages on."""
    now = datetime.now(UTC).replace(tzinfo=None)
    insert_new(store.tombstones, [{**place, "deleted_at": now} for place in places])


def keyed(store: Store, tenant: str) -> dict[str, Doc]:
    """The tenant's keyed assistants by key: their `_id`, id, creation time and
    content hash (not their content).

    One read a batch. MongoDB serves it from the partial key index (the filter
    implies the index's), at a cost of the tenant's keyed assistants.
    SecantusDB reads the tenant's range of the (tenant, created_at) index
    instead, a cost of all the tenant's assistants; hinted to the key index it
    scans every tenant's keys (3.1 s against 14 ms for a tenant of 10 keys
    beside one of 20,000), so it is not hinted. Keys are not looked up with
    `$in`: SecantusDB's cost is keys times the tenant's documents (6.4 s for 50
    keys of a tenant with 20,000), so assistants are then found by id.
    """
    found = store.assistants.find(
        {"tenant": tenant, KEY: {"$type": "string"}},
        {"id": 1, KEY: 1, "created_at": 1, CONTENT_HASH: 1},
    )
    return {doc[KEY]: doc for doc in found}


def keyed_ids(store: Store, tenant: str) -> dict[str, str]:
    """Each provisioning key of the tenant, mapped to its assistant's id."""
    return {key: doc["id"] for key, doc in keyed(store, tenant).items()}


def may_be_id(name: str) -> bool:
    return name.startswith("asst_")


def find_named(
    store: Store, tenant: str, names: list[str], keyed: dict[str, str] | None = None
) -> dict[str, Doc]:
    """The tenant's assistants an apply line names: by provisioning key, or else
    by id; each name mapped to its assistant. `keyed` is `keyed_ids`, if read."""
    if not names:
        return {}
    if keyed is None:
        keyed = keyed_ids(store, tenant)
    ids = {keyed.get(name, name) for name in names}
    ids = {one for one in ids if may_be_id(one)}
    mine = {"tenant": tenant}
    found = {doc["id"]: doc for doc in find_in(store.assistants, "id", sorted(ids), where=mine)}
    named: dict[str, Doc] = {}
    for name in names:
        doc = found.get(keyed[name]) if name in keyed else None
        if doc is None or doc.get(KEY) != name:
            doc = found.get(name)
        if doc is not None:
            named[name] = doc
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
    """The tenant's assistants that carry a provisioning key: their `_id`, id and
    key. Not hinted, as `keyed` says."""
    yield from store.assistants.find(
        {"tenant": tenant, KEY: {"$type": "string"}}, {"id": 1, KEY: 1}, batch_size=1000
    )


def delete_by_oids(store: Store, oids: list[Any]) -> None:
    if oids:
        _bury(store, list(find_in(store.assistants, "_id", oids, PLACE)))
        store.assistants.delete_many({"_id": {"$in": oids}})


def insert(store: Store, docs: list[Doc]) -> list[Doc]:
    """Insert the assistants; returns the ones whose `_id` was stored already."""
    existing = insert_new(store.assistants, docs)
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
