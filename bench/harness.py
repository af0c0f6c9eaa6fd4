"""A deployment for benchmarks: real servers, the edge and workers laid out as
`assistant-ingest dev` lays them out (a single-create worker, a bulk worker)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cli.dev import DEV_WORKERS
from cli.embedded import start_mongo, start_valkey
from tests.stack import Servers, Stack, Tenant, wait_until
from worker.settings import Settings

# The tests' short reconciling and lease timings (tests.stack.FAST) are put back
# to the service's own: with a 3 s resend threshold the reconciler sends every
# job of a backlog again, and the duplicates slow the very drain being measured.
SERVICE_TIMINGS = {
    key: str(Settings.model_fields[key.lower()].default)
    for key in (
        "RECONCILE_INTERVAL_SECONDS",
        "RESEND_AFTER_SECONDS",
        "LEASE_SECONDS",
        "WEBHOOK_SWEEP_INTERVAL_SECONDS",
    )
}
QUIET = {"LOG_LEVEL": "WARNING", "WEBHOOK_ALLOW_PRIVATE": "true", **SERVICE_TIMINGS}


@contextmanager
def deployment(
    bulk_processes: int | None = None, **overrides: str
) -> Iterator[tuple[Stack, Tenant]]:
    """`bulk_processes`: the bulk worker's, instead of `dev`'s."""
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        data = Path(tmp)
        valkey = start_valkey(data / "valkey")
        mongo = start_mongo(data / "mongo")
        stack = Stack(Servers(mongo=mongo, valkey=valkey), data, {**QUIET, **overrides})
        try:
            stack.start_api()
            for name, worker_args in DEV_WORKERS.items():
                args = list(worker_args)
                if name == "worker-bulk" and bulk_processes is not None:
                    args[args.index("--concurrency") + 1] = str(bulk_processes)
                stack.spawn(name, *args)
            stack.spawn("beat", "beat", "--schedule", str(data / "celerybeat-schedule"))
            tenant = stack.new_tenant("bench")
            warm_up(tenant)
            yield stack, tenant
        finally:
            stack.stop()
            mongo.stop()
            valkey.stop()


def warm_up(tenant: Tenant) -> None:
    """Wait until both workers answer, through the real path."""

    def single_done() -> bool:
        response = tenant.create({"model": "warm-up"}, Prefer="wait=5")
        return response.status_code == 200

    wait_until(single_done, timeout=120, interval=0.5)
    batch = tenant.request(
        "POST",
        "/v1/batches",
        data=b'{"body": {"model": "warm-up"}}\n',
        headers={"Content-Type": "application/x-ndjson"},
    ).json()
    wait_batch(tenant, batch["id"], timeout=120)


def wait_batch(tenant: Tenant, batch_id: str, timeout: float = 600) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        batch: dict[str, Any] = tenant.request("GET", f"/v1/batches/{batch_id}").json()
        return batch if batch["status"] in ("completed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, timeout=timeout, interval=0.05)
    return result


def run_batch(tenant: Tenant, data: bytes, query: str = "") -> tuple[float, dict[str, Any]]:
    """POST a JSONL upload to /v1/batches, then wait: the seconds until it
    finished, and the batch as it finished."""
    started = time.perf_counter()
    response = tenant.request(
        "POST",
        f"/v1/batches?{query}",
        data=data,
        headers={"Content-Type": "application/x-ndjson"},
    )
    response.raise_for_status()
    batch = wait_batch(tenant, response.json()["id"])
    return time.perf_counter() - started, batch


def assistant_body(i: int, size: int = 1000) -> dict[str, Any]:
    """A valid create request of about `size` bytes."""
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "name": f"assistant {i}",
        "description": "Provisioned in bulk for a benchmark",
        "tools": [{"type": "code_interpreter"}, {"type": "retrieval"}],
        "metadata": {"team": "bench", "index": str(i)},
    }
    pad = size - len(json.dumps(body)) - len(', "instructions": ""')
    body["instructions"] = "x" * max(0, pad)
    return body


def raw_insert_many_rate(
    stack: Stack, count: int, size: int = 1000, batch: int = 1000, indexed: bool = False
) -> float:
    """Documents per second of plain insert_many into the same store; with
    `indexed`, into a collection with the indexes the assistants collection has."""
    store = stack.store()
    try:
        collection = store.db["bench_raw"]
        collection.drop()
        if indexed:
            collection.create_index("id", unique=True)
            collection.create_index([("tenant", 1), ("created_at", 1), ("_id", 1)])
        docs = [
            {"id": f"asst_{i:024d}", "tenant": "bench", "created_at": i, **assistant_body(i, size)}
            for i in range(count)
        ]
        started = time.perf_counter()
        for offset in range(0, count, batch):
            collection.insert_many(docs[offset : offset + batch])
        elapsed = time.perf_counter() - started
        collection.drop()
        return count / elapsed
    finally:
        store.close()


def raw_round_trip_seconds(stack: Stack, count: int) -> list[float]:
    """One insert and one find by key, as a waited create costs at the least.

    The find is by `_id`, always indexed, as the service finds a job: a find
    by an unindexed field would scan the collection and flatter the service."""
    store = stack.store()
    try:
        collection = store.db["bench_raw"]
        collection.drop()
        times = []
        for i in range(count):
            started = time.perf_counter()
            inserted = collection.insert_one({"k": i, **assistant_body(i)}).inserted_id
            found = collection.find_one({"_id": inserted})
            times.append(time.perf_counter() - started)
            assert found is not None and found["k"] == i
        collection.drop()
        return times
    finally:
        store.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """The peak RSS (KiB) of some processes while the block runs, sampled every 10 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.kib = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.kib = max(self.kib, max(rss_kib(pid) for pid in self.pids))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._sampler.join()


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = [int(p) for p in children.read_text().split()]
    except OSError:
        kids = []
    return [pid, *[p for kid in kids for p in process_tree(kid)]]


def env_cpu_note() -> str:
    return f"{os.cpu_count()} cores"
