"""The shapes the store's commands take for SecantusDB, in one place.

Production is MongoDB. The tests and `assistant-ingest dev` run on SecantusDB,
a MongoDB-compatible server whose planner differs from mongod's; where a shape
MongoDB serves well costs SecantusDB seconds, the service uses one both serve
well, if it costs MongoDB little. Each is here, with its figures (SecantusDB,
measured on these machines; MongoDB's cost is what the shape adds to its plain
form). Everything else in `worker.store` is written the plain MongoDB way.

- `find_in`: an `$in` of many values is read in groups of `IN_GROUP`, field
  first. SecantusDB checks each document an `$in` finds against the whole
  list, n squared comparisons for n values: 500 ids in one `$in` take about
  2 s, in groups of 50 about 10 ms. It also plans by a filter's first field:
  `{id: {$in: 50 ids}, tenant}` takes 8 ms, `{tenant, id: {$in: ...}}` 1.9 s in
  a tenant of 10,000 assistants. MongoDB pays one round trip a group (10
  instead of 1 for a chunk of 500), and ignores the order.
- `update_then_read`: an update by `_id`, then a read by `_id`, where
  `find_one_and_update` would be one command: SecantusDB plans that as a scan
  of the collection (350 ms against 2.8 ms for both commands, 20,000
  documents). MongoDB pays one round trip more (a delivery's claim, a
  batch's commit and each tally of its chunks).
- Provisioning keys are held by a single-field sparse unique index on
  `key_ref` (the tenant and the key in one string), not a partial index on
  `(tenant, provisioning_key)`: SecantusDB plans no partial index, and hinted
  to one it reads every tenant's keys (2.4 s for 50 keys). This one is also
  the plain MongoDB way (`worker.store.assistants`), at no cost.
- `insert_in_groups`: a chunk's assistants are inserted in groups of
  `INSERT_GROUP`. SecantusDB holds a collection's write lock for a whole
  `insert_many` (mongod locks documents): beside another tenant's 20,000-line
  batch, a 20-line batch's insert waited behind the bulk workers' inserts of
  500 and the batch took 2.0-3.5 s (0.1 s alone); in groups it took 0.5-1.2 s,
  and the big batch its same 22-27 s. MongoDB pays 4 more round trips a chunk.
- `units._changing` asks for units by `targets` alone and filters their status
  in the process: SecantusDB uses an index only for a query on its one field.
  MongoDB reads, beside the open units, the finished ones that share a target
  within the retention window: few.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pymongo.collection import Collection

from worker.domain.documents import Doc
from worker.store.connection import insert_new

IN_GROUP = 50
INSERT_GROUP = 100


def find_in(
    collection: Collection[Doc],
    field: str,
    values: Sequence[Any],
    projection: Doc | None = None,
    where: Doc | None = None,
) -> Iterator[Doc]:
    """The documents whose `field` is one of `values` (and that match `where`,
    the tenant for one), read in groups of IN_GROUP, `field` first."""
    for start in range(0, len(values), IN_GROUP):
        group = list(values[start : start + IN_GROUP])
        yield from collection.find({field: {"$in": group}, **(where or {})}, projection)


def insert_in_groups(collection: Collection[Doc], docs: list[Doc]) -> set[int]:
    """`insert_new` in groups of INSERT_GROUP: the indexes of `docs` that were
    stored already."""
    stored: set[int] = set()
    for start in range(0, len(docs), INSERT_GROUP):
        group = docs[start : start + INSERT_GROUP]
        stored |= {start + index for index in insert_new(collection, group)}
    return stored


def update_then_read(
    collection: Collection[Doc], query: Doc, update: Doc | list[Doc], projection: Doc | None = None
) -> Doc | None:
    """`find_one_and_update(query, update)` returning the document after it, as
    an update and a read by `_id` (and the tenant, where the query names one).
    None if nothing matched. The read may see a later writer's change too:
    callers that hold a lease check it in what is returned."""
    if collection.update_one(query, update).matched_count == 0:
        return None
    return collection.find_one(
        {key: query[key] for key in ("_id", "tenant") if key in query}, projection
    )
