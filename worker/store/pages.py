"""Keyset pagination, written once: a page is a range of an index, never a skip."""

from __future__ import annotations

from pymongo.collection import Collection

from worker.domain.documents import Doc

# Every list is ordered by creation time, ties broken by _id.
ORDER = ("created_at", "_id")


def beyond(anchor: Doc, *, ascending: bool, inclusive: bool = False) -> Doc:
    """What follows `anchor` in the (created_at, _id) order, or comes before it when
    not `ascending`; with `inclusive`, the anchor itself too."""
    op = "$gt" if ascending else "$lt"
    first, tie = ORDER
    return {
        "$and": [
            # The range alone bounds the index scan; the $or breaks ties by _id.
            {first: {op + "e": anchor[first]}},
            {
                "$or": [
                    {first: {op: anchor[first]}},
                    {tie: {(op + "e") if inclusive else op: anchor[tie]}},
                ]
            },
        ]
    }


def read(
    collection: Collection[Doc], query: Doc, *, ascending: bool, limit: int
) -> tuple[list[Doc], bool]:
    """Up to `limit` documents in order, and whether more follow."""
    direction = 1 if ascending else -1
    docs = list(collection.find(query, sort=[(key, direction) for key in ORDER], limit=limit + 1))
    return docs[:limit], len(docs) > limit


def window(
    collection: Collection[Doc],
    query: Doc,
    *,
    ascending: bool,
    limit: int,
    after: Doc | None = None,
    before: Doc | None = None,
) -> tuple[list[Doc], bool]:
    """A page of the list in its order (`ascending` or not) and whether more follow
    in the direction read: what follows `after`, what precedes `before`, or what
    lies between both. `before` alone reads back towards the start, then restores
    the order, as OpenAI's lists do."""
    bounds = [beyond(after, ascending=ascending)] if after is not None else []
    if before is not None:
        bounds.append(beyond(before, ascending=not ascending))
    if bounds:
        query = {**query, "$and": [*query.get("$and", []), *bounds]}
    backwards = before is not None and after is None
    docs, has_more = read(collection, query, ascending=ascending != backwards, limit=limit)
    if backwards:
        docs.reverse()
    return docs, has_more
