"""The `assistants` collection."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, UpdateOne

from worker.domain.documents import Doc
from worker.store import pages
from worker.store.connection import Store, insert_new


def ensure_indexes(store: Store) -> None:
    store.assistants.create_index("id", unique=True)
    store.assistants.create_index(
        [("tenant", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
    )


def insert(store: Store, docs: list[Doc]) -> list[Doc]:
    """Insert the assistants; returns the ones whose `_id` was stored already."""
    existing = insert_new(store.assistants, docs)
    return [doc for i, doc in enumerate(docs) if i in existing]


def find_by_ids(store: Store, ids: list[Any]) -> list[Doc]:
    return list(store.assistants.find({"_id": {"$in": ids}}))


def get(store: Store, tenant: str, assistant_id: str) -> Doc | None:
    return store.assistants.find_one({"id": assistant_id, "tenant": tenant})


def exists(store: Store, tenant: str, assistant_id: str) -> bool:
    found = store.assistants.find_one({"id": assistant_id, "tenant": tenant}, {"_id": 1})
    return found is not None


def delete(store: Store, tenant: str, assistant_id: str) -> bool:
    return store.assistants.delete_one({"id": assistant_id, "tenant": tenant}).deleted_count == 1


def find_by_public_ids(store: Store, assistant_ids: list[str]) -> list[Doc]:
    """The assistants with these ids, of any tenant (callers check the tenant)."""
    return list(store.assistants.find({"id": {"$in": assistant_ids}}))


def delete_by_public_ids(store: Store, assistant_ids: list[str]) -> None:
    store.assistants.delete_many({"id": {"$in": assistant_ids}})


def _set_literally(fields: Doc) -> list[Doc]:
    """An update pipeline that sets `fields` to exactly these values.

    `$literal` keeps keys such as "$where" and strings such as "$x" from being
    read as operators or field paths; a tree that is set drops its legacy
    `*_json` field.
    """
    stages: list[Doc] = [{"$set": {name: {"$literal": value} for name, value in fields.items()}}]
    legacy = [f"{name}_json" for name in ("tools", "metadata") if name in fields]
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
    """An `after` or `before` id that names no assistant of the tenant."""

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
    Raises UnknownCursor for a cursor id the tenant does not have.
    """
    ascending = order == "asc"
    bounds: list[Doc] = []
    for name, cursor_id in (("after", after), ("before", before)):
        if cursor_id is None:
            continue
        anchor = store.assistants.find_one({"id": cursor_id, "tenant": tenant}, {"created_at": 1})
        if anchor is None:
            raise UnknownCursor(name, cursor_id)
        bounds.append(pages.beyond(anchor, ascending=(name == "after") == ascending))
    query: Doc = {"tenant": tenant}
    if bounds:
        query["$and"] = bounds
    # Going back from `before` alone reads towards the start, then restores the order.
    backwards = before is not None and after is None
    page, has_more = pages.read(
        store.assistants, query, ascending=ascending != backwards, limit=limit
    )
    if backwards:
        page.reverse()
    return page, has_more
