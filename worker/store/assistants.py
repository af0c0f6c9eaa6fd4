"""The `assistants` collection."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING

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


def delete(store: Store, tenant: str, assistant_id: str) -> bool:
    return store.assistants.delete_one({"id": assistant_id, "tenant": tenant}).deleted_count == 1


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
