"""What each store operation of a single create costs the store, in CPU.

Starts a SecantusDB server of its own, fills the jobs collection with `--units`
single-create units (the store's cost of some operations grows with it), then
runs each operation the service makes for a create, with the service's own
store functions, and prints the store process's CPU per operation, beside the
one insert a synchronous API makes:

    PYTHONPATH=. .venv/bin/python -m bench.store_ops [--units 3000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pymongo import ReturnDocument

from bench.harness import assistant_body, cpu_seconds
from cli.embedded import start_mongo
from worker.domain import assistants as assistant_docs
from worker.domain.documents import Item, Unit
from worker.domain.ids import new_id
from worker.domain.retention import expire_at
from worker.domain.schema import AssistantCreate, validate_create
from worker.domain.units import new_unit
from worker.settings import Settings
from worker.store import assistants, tenants, units
from worker.store.connection import Store
from worker.store.indexes import ensure_indexes

BODY = json.dumps(assistant_body(0))
REQUEST = validate_create(json.loads(BODY), [])
assert isinstance(REQUEST, AssistantCreate)


def fresh_unit() -> Unit:
    job_id = new_id("job_")
    now = time.time()
    item: Item = {"id": job_id, "custom_id": None, "body": BODY}
    return new_unit(unit_id=job_id, tenant="t", items=[item], now=int(now), accepted_at=now)


def per_op(cpu: Callable[[], float], repeat: int, operation: Callable[[], object]) -> float:
    """Store CPU milliseconds per call of `operation`."""
    before = cpu()
    for _ in range(repeat):
        operation()
    return (cpu() - before) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=3000, help="units stored before measuring")
    parser.add_argument("--repeat", type=int, default=200, help="calls of each operation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        server = start_mongo(Path(tmp) / "mongo")
        settings = Settings(mongodb_uri=f"mongodb://127.0.0.1:{server.port}/bench")
        store = Store.connect(settings)
        try:
            ensure_indexes(store)
            tenants.create_key(store, "t", None)
            for _ in range(0, args.units, 500):
                units.insert_units(store, [fresh_unit() for _ in range(500)])
            to_claim = [fresh_unit() for _ in range(args.repeat * 2)]
            units.insert_units(store, to_claim)
            queued = iter(unit["_id"] for unit in to_claim)
            claimed: list[Unit] = []

            def cpu() -> float:
                return cpu_seconds(server.process.pid)

            def claim() -> None:
                claimed.extend(units.claim(store, [next(queued)], 60))

            def claim_in_one_trip() -> None:
                store.jobs.find_one_and_update(
                    {"_id": next(queued), "status": "queued"},
                    {"$set": {"status": "in_progress"}},
                    return_document=ReturnDocument.AFTER,
                )

            def record() -> None:
                unit = claimed.pop()
                outcome = {unit["_id"]: [(200, {"_id": "x", "id": "asst_x"})]}
                when = int(time.time())
                units.record(
                    store,
                    [unit],
                    outcome,
                    now=when,
                    expire_at=expire_at(settings, when),
                    owing=set(),
                )

            def insert_assistant() -> None:
                doc = assistant_docs.new_document(
                    REQUEST, tenant="t", job_id=new_id("job_"), accepted_at=time.time(), now=0
                )
                assistants.insert(store, [doc])

            # The peer's collection, indexed as bench/peer.py indexes it.
            peer_collection = store.db["peer"]
            peer_collection.create_index("id", unique=True)
            peer_collection.create_index([("created_at", 1), ("_id", 1)])

            def peer_insert() -> None:
                doc = {**json.loads(BODY), "id": new_id("asst_"), "created_at": int(time.time())}
                peer_collection.insert_one(doc)

            rows = [
                (
                    "edge: insert the unit (journaled)",
                    lambda: units.insert_units(store, [fresh_unit()]),
                ),
                ("worker: claim (update, then read by _id)", claim),
                ("worker: insert the assistant", insert_assistant),
                ("worker: the tenant's endpoint", lambda: tenants.webhook_urls(store, {"t"})),
                ("worker: record the result", record),
                ("not used: claim by find_one_and_update", claim_in_one_trip),
                ("peer: its one insert_one (bench/peer.py)", peer_insert),
            ]
            print(f"store CPU per operation, jobs collection of {args.units:,}+ units, SecantusDB")
            total = peer = 0.0
            for label, operation in rows:
                ms = per_op(cpu, args.repeat, operation)
                if label.startswith(("edge", "worker")):
                    total += ms
                elif operation is peer_insert:
                    peer = ms
                print(f"  {label:<48} {ms:6.2f} ms")
            print(f"  a lone create, all of the above that it makes: {total:.2f} ms")
            print(f"  ratio to the peer's one insert: {total / peer:.1f}x")
        finally:
            store.close()
            server.stop()


if __name__ == "__main__":
    main()
