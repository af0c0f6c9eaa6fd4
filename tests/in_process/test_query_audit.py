"""Every store command the edge makes for a request names the tenant, and every
filter with its sort is one a declared index serves by MongoDB's prefix rules.

A `CommandListener` on the app's own client records what the store is asked
while the edge serves a tour of the API with the workers paused; the worker
then runs what was queued, and its commands are checked against the indexes
too. The table of shapes and the index serving each is printed for
`docs/QUERIES.md`, which this test keeps in step.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient, monitoring

from api.context import runtime_of
from tests.local import Local
from tests.stack import Servers
from worker.runtime import Runtime
from worker.store.connection import Store

# The collections whose documents belong to a tenant.
TENANT_OWNED = {"assistants", "jobs", "batches", "webhook_deliveries", "assistant_tombstones"}
# Commands that read or change documents, and where each keeps its filters.
FILTERED = {"find", "update", "delete", "findAndModify", "count", "aggregate", "distinct"}
QUERIES = Path(__file__).resolve().parents[2] / "docs" / "QUERIES.md"


@dataclass
class Recorder(monitoring.CommandListener):
    edge: bool = True
    seen: list[tuple[bool, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Documents the edge read, by collection (`find` and `getMore` replies).
    read: Counter[str] = field(default_factory=Counter)
    reading: dict[int, str] = field(default_factory=dict)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in FILTERED:
            with self.lock:
                self.seen.append((self.edge, event.command_name, dict(event.command)))
        if self.edge and event.command_name in ("find", "getMore"):
            collection = event.command["find" if event.command_name == "find" else "collection"]
            with self.lock:
                self.reading[event.request_id] = collection

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self.lock:
            collection = self.reading.pop(event.request_id, None)
        if collection is not None:
            cursor = event.reply.get("cursor", {})
            batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
            with self.lock:
                self.read[collection] += len(batch)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def shapes(name: str, command: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], list[str]]]:
    """Each (collection, filter, sort fields) a command holds."""
    collection = str(command[name])
    if name == "find":
        yield collection, command.get("filter", {}), list(command.get("sort", {}) or {})
    elif name == "update":
        for one in command["updates"]:
            yield collection, one["q"], []
    elif name == "delete":
        for one in command["deletes"]:
            yield collection, one["q"], []
    elif name == "findAndModify":
        yield collection, command.get("query", {}), list(command.get("sort", {}) or {})
    elif name in ("count", "distinct"):
        yield collection, command.get("query", {}), []
    elif name == "aggregate":
        stages = command.get("pipeline", [])
        match = stages[0].get("$match", {}) if stages else {}
        sort = next((list(stage["$sort"]) for stage in stages if "$sort" in stage), [])
        yield collection, match, sort


def clauses(query: dict[str, Any]) -> list[dict[str, Any]]:
    """The query as alternatives: each `$or` branch with the fields beside it."""
    if "$or" in query:
        rest = {k: v for k, v in query.items() if k != "$or"}
        return [{**rest, **branch} for branch in query["$or"]]
    return [query]


def equality(value: Any) -> bool:
    return not isinstance(value, dict) or set(value) <= {"$eq", "$in"}


def served_by(
    query: dict[str, Any], sort: list[str], indexes: dict[str, dict[str, Any]]
) -> str | None:
    """The index that best serves the query and sort by the prefix rules (the
    one using most fields): leading fields of the index held by equality in
    the filter, then at most one range, or the sort, if any, next (fields held
    by equality may be left out of the sort). None if no index does."""
    best: tuple[int, str] | None = None
    for name, spec in indexes.items():
        fields = [key for key, _ in spec["key"]]
        partial = spec.get("partialFilterExpression")
        if partial and not all(key in query for key in partial):
            continue
        used = 0
        while used < len(fields) and fields[used] in query and equality(query[fields[used]]):
            used += 1
        ranged = used < len(fields) and fields[used] in query
        if not used and not ranged:
            continue
        if sort:
            wanted = [key for key in sort if not (key in query and equality(query[key]))]
            # A range on the first sort field is served in order too.
            if fields[used : used + len(wanted)] != wanted:
                continue
        score = used + ranged
        if best is None or score > best[0]:
            best = (score, name)
    return None if best is None else best[1]


@pytest.fixture
def audited(servers: Servers) -> Iterator[tuple[Local, Recorder]]:
    """An in-process deployment whose store client reports every command."""
    local = Local(servers.settings(CHUNK_SIZE="10"))
    recorder = Recorder()
    settings = local.settings
    client: MongoClient[Any] = MongoClient(settings.mongodb_uri, event_listeners=[recorder])
    store = Store(client=client, db=client[settings.database_name])
    built = runtime_of(local.app)
    ours = Runtime(settings=settings, store=store, redis=redis.Redis.from_url(settings.redis_url))
    local.app.extensions["assistant_ingest.runtime"] = (os.getpid(), ours)
    try:
        yield local, recorder
    finally:
        built.close()
        local.close()


def tour(local: Local, recorder: Recorder) -> None:
    """Every route a tenant uses, with the worker run between steps."""
    tenant, other = local.new_tenant(), local.new_tenant()
    nd = {"Content-Type": "application/x-ndjson"}

    def worker() -> None:
        recorder.edge = False
        try:
            local.worker.run_queued()
        finally:
            recorder.edge = True

    created = tenant.request("POST", "/v1/assistants", json={"model": "gpt-4", "name": "a"})
    keyed = tenant.request(
        "POST", "/v1/assistants", json={"model": "gpt-4"}, headers={"Idempotency-Key": "k1"}
    )
    worker()
    job = created.json()["id"]
    assistant = tenant.request("GET", f"/v1/jobs/{job}").json()["result"]["body"]["id"]
    tenant.request("GET", f"/v1/jobs/{keyed.json()['id']}")
    other.request("GET", f"/v1/jobs/{job}")
    tenant.request("GET", "/v1/jobs?limit=2")
    tenant.request("GET", "/v1/jobs?status=succeeded&limit=2")
    tenant.request("GET", "/v1/assistants?limit=2")
    tenant.request("GET", f"/v1/assistants?limit=1&after={assistant}")
    tenant.request("GET", f"/v1/assistants/{assistant}")
    other.request("GET", f"/v1/assistants/{assistant}")
    tenant.request("POST", f"/v1/assistants/{assistant}", json={"name": "b"})
    worker()
    lines = "".join(
        json.dumps({"custom_id": f"k{i}", "body": {"model": "gpt-4", "name": f"n{i}"}}) + "\n"
        for i in range(25)
    )
    batch = tenant.request("POST", "/v1/batches", data=lines, headers=nd).json()["id"]
    applied = tenant.request("POST", "/v1/batches?mode=apply", data=lines, headers=nd).json()
    tenant.request("POST", "/v1/batches?mode=apply&dry_run=true", data=lines, headers=nd)
    tenant.request("GET", f"/v1/batches/{batch}")
    other.request("GET", f"/v1/batches/{batch}")
    worker()
    tenant.request("GET", f"/v1/batches/{batch}/results")
    tenant.request("GET", f"/v1/batches/{applied['id']}/results?status=failed")
    other.request("GET", f"/v1/batches/{batch}/results")
    tenant.request("GET", "/v1/batches?limit=2")
    tenant.request("POST", "/v1/batches?mode=apply&prune=true", data=lines, headers=nd)
    late = tenant.request("POST", "/v1/batches", data=lines, headers=nd).json()["id"]
    tenant.request("POST", f"/v1/batches/{late}/cancel")
    other.request("POST", f"/v1/batches/{late}/cancel")
    worker()
    tenant.request("GET", "/v1/webhook_deliveries?limit=2")
    tenant.request("GET", "/v1/webhook_deliveries?limit=2&order=desc")
    tenant.request("POST", "/v1/webhook_deliveries/recover", json={"since": 0})
    tenant.request("GET", "/v1/assistants/export")
    tenant.request("GET", f"/v1/batches/{batch}/results?status=failed&format=input")
    tenant.request("POST", f"/v1/batches/{late}/retry")
    other.request("POST", f"/v1/batches/{late}/retry")
    tenant.request("GET", "/v1/jobs?limit=2&order=desc")
    tenant.request("GET", "/v1/batches?limit=2&order=asc")
    other.request("DELETE", f"/v1/assistants/{assistant}")
    tenant.request("DELETE", f"/v1/assistants/{assistant}?dry_run=true")
    tenant.request("DELETE", f"/v1/assistants/{assistant}")
    # A cursor naming the assistant just deleted pages on from where it was.
    tenant.request("GET", f"/v1/assistants?limit=1&after={assistant}")
    tenant.request("GET", f"/v1/assistants?limit=1&before={assistant}")
    worker()


def test_every_query_names_the_tenant_and_has_an_index(
    audited: tuple[Local, Recorder],
) -> None:
    local, recorder = audited
    tour(local, recorder)
    store = runtime_of(local.app).store
    indexes = {
        name: store.db[name].index_information() for name in store.db.list_collection_names()
    }
    no_tenant: list[str] = []
    no_index: list[str] = []
    table: set[tuple[str, str, str, str]] = set()
    for edge, name, command in recorder.seen:
        for collection, query, sort in shapes(name, command):
            if not query or collection not in indexes:
                continue
            for clause in clauses(query):
                shape = json.dumps(sorted(clause), separators=(",", ":"))
                line = f"{name} {collection} {shape} sort={sort}"
                if edge and collection in TENANT_OWNED and "tenant" not in clause:
                    no_tenant.append(line)
                index = served_by(clause, sort, indexes[collection])
                if index is None:
                    no_index.append(line)
                table.add((collection, ", ".join(sorted(clause)), ", ".join(sort), index or "-"))
    assert not sorted(set(no_tenant)), "edge commands without the tenant:\n" + "\n".join(
        sorted(set(no_tenant))
    )
    assert not sorted(set(no_index)), "filters no index serves:\n" + "\n".join(
        sorted(set(no_index))
    )
    rows = [f"| {c} | {f} | {s or '-'} | `{i}` |" for c, f, s, i in sorted(table)]
    if os.environ.get("WRITE_QUERIES"):
        QUERIES.write_text(QUERIES_HEAD + "\n".join(rows) + "\n")
    documented = set(QUERIES.read_text().splitlines())
    missing = [row for row in rows if row not in documented]
    assert not missing, (
        "query shapes not in docs/QUERIES.md (run this test with WRITE_QUERIES=1):\n"
        + "\n".join(missing)
    )


def test_an_apply_reads_the_assistants_its_lines_name_and_no_others(
    audited: tuple[Local, Recorder],
) -> None:
    """Its cost is the manifest's, whatever else the tenant (or another) keyed."""
    local, recorder = audited
    tenant, other = local.new_tenant(), local.new_tenant()
    nd = {"Content-Type": "application/x-ndjson"}

    def manifest(keys: range, name: str) -> str:
        return "".join(
            json.dumps({"custom_id": f"k{i}", "body": {"model": "gpt-4", "name": name}}) + "\n"
            for i in keys
        )

    for who in (tenant, other):
        sent = who.request(
            "POST", "/v1/batches?mode=apply", data=manifest(range(300), "a"), headers=nd
        )
        assert sent.status_code == 202, sent.text
    local.worker.run_queued()
    # Two keys changed, one unchanged, one new: each read is of those four.
    lines = manifest(range(2), "b") + manifest(range(2, 3), "a") + manifest(range(900, 901), "a")
    recorder.read.clear()
    planned = tenant.request("POST", "/v1/batches?mode=apply&dry_run=true", data=lines, headers=nd)
    actions = [json.loads(line)["action"] for line in planned.text.splitlines()]
    assert actions == ["update", "update", "unchanged", "create"]
    assert 0 < recorder.read["assistants"] <= 2 * 3, recorder.read
    recorder.read.clear()
    applied = tenant.request("POST", "/v1/batches?mode=apply", data=lines, headers=nd)
    assert applied.status_code == 202, applied.text
    assert 0 < recorder.read["assistants"] <= 3, recorder.read
    local.worker.run_queued()
    done = tenant.request("GET", f"/v1/batches/{applied.json()['id']}").json()["request_counts"]
    assert (done["updated"], done["unchanged"], done["created"]) == (2, 1, 1)


QUERIES_HEAD = """# Query shapes and the index serving each

Every filter (with its sort) the service sends to MongoDB, on the collections
it owns, and the declared index that serves it by MongoDB's prefix rules:
leading index fields held by equality in the filter, then at most one range,
or the sort. Written by `tests/in_process/test_query_audit.py` (run it with
`WRITE_QUERIES=1` to rewrite this file); the test fails when a command the
suite's tour makes has a shape missing here, has no index, or, made by the
edge for a request on a tenant's collection, does not name the tenant.

Commands made across tenants by nature are the reconciler's and the webhook
sweep's (`units.due`, `batches.abandoned`, `batches.unfinished`,
`batches.stale_outbox`, `units.stale_outbox`, `deliveries` due), and the
worker's reads by `_id` of the units a message names; each returns the tenant
with what it finds, and every command after it names the tenant.

| collection | filter fields | sort | index |
|---|---|---|---|
"""
