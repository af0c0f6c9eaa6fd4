"""Job lists filtered by status: `GET /v1/jobs?status=...&limit=1` on a tenant with
50,000 jobs, and what 16 such lists in parallel do to another tenant's reads.

The jobs are written with the store's own writes (insert, claim, record), so the
documents are what the service makes: 50,000 single creates, all finished but
the newest, which is queued; and a 50,000-request batch (100 chunks), all
finished but its last chunk.

    PYTHONPATH=. .venv/bin/python -m bench.job_lists [--jobs 50000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from bench.harness import deployment, percentile
from tests.stack import Stack, Tenant
from worker.domain.ids import new_id
from worker.domain.retention import expire_at
from worker.domain.statuses import UnitStatus
from worker.domain.units import job_statuses, new_unit

# Far in the future: the reconciler must not send the queued units to a worker.
NEVER = 10**9
INSERT_BATCH = 1000


def populate(stack: Stack, tenant: str, count: int, per_unit: int) -> str | None:
    """`count` jobs in units of `per_unit` (1: single creates, else one batch's
    chunks), all finished (422) but the last unit, which is queued; returns the
    batch id, if any. Units are made by `new_unit` and finished as `units.record`
    finishes them, then written with insert_many (the store's claims of tens of
    thousands of ids at once are far slower than the service ever needs)."""
    store = stack.store()
    batch_id = new_id("batch_") if per_unit > 1 else None
    now = int(time.time())
    result = json.dumps({"detail": [{"type": "missing", "loc": ["body", "model"], "msg": "x"}]})
    try:
        made: list[Any] = []
        for seq, start in enumerate(range(0, count, per_unit)):
            items = []
            for _ in range(min(per_unit, count - start)):
                job_id = new_id("job_")
                items.append({"id": job_id, "custom_id": None, "body": '{"name": 5}'})
            unit_id = items[0]["id"] if batch_id is None else new_id("chunk_")
            made.append(
                new_unit(
                    unit_id=unit_id,
                    tenant=tenant,
                    items=items,
                    now=now,
                    batch_id=batch_id,
                    seq=seq,
                    resend_after=NEVER,
                )
            )
        for unit in made[:-1]:
            codes = [422] * len(unit["items"])
            del unit["due_at"]
            unit.update(
                status=UnitStatus.DONE,
                started_at=now,
                completed_at=now,
                attempts=1,
                codes=codes,
                results=[result] * len(codes),
                job_statuses=job_statuses(UnitStatus.DONE, codes),
                expire_at=expire_at(stack.settings, now),
            )
        for offset in range(0, len(made), INSERT_BATCH):
            store.jobs.insert_many(made[offset : offset + INSERT_BATCH])
        return batch_id
    finally:
        store.close()


def timed(tenant: Tenant, path: str, repeat: int) -> tuple[list[float], int]:
    """Each answer's time, and how many were not a 200 (a 503 when the store
    did not answer in time)."""
    times, failed = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = tenant.request("GET", path)
        times.append(time.perf_counter() - started)
        failed += response.status_code != 200
    return times, failed


def ms(values: list[float], failed: int = 0) -> str:
    p50, p99 = statistics.median(values) * 1000, percentile(values, 99) * 1000
    text = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    return text + (f", {failed} of {len(values)} not 200" if failed else "")


def other_tenant_reads(other: Tenant, job_id: str, seconds: float) -> tuple[list[float], int]:
    times, failed = [], 0
    deadline = time.monotonic() + seconds
    # At least a few reads, however long they take.
    while time.monotonic() < deadline or len(times) < 5:
        started = time.perf_counter()
        response = other.request("GET", f"/v1/jobs/{job_id}")
        times.append(time.perf_counter() - started)
        failed += response.status_code != 200
    return times, failed


def under_load(
    tenant: Tenant, other: Tenant, job_id: str, path: str, clients: int
) -> tuple[list[float], int]:
    """Another tenant's job reads while `clients` list `path` without pause."""
    stop = threading.Event()

    def lister() -> None:
        own = Tenant(tenant.stack, tenant.name, tenant.api_key, tenant.webhook_secret)
        while not stop.is_set():
            own.request("GET", path)

    threads = [threading.Thread(target=lister) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        return other_tenant_reads(other, job_id, 8)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with deployment() as (stack, _):
        singles = stack.new_tenant("singles")
        batched = stack.new_tenant("batched")
        other = stack.new_tenant("other")
        started = time.perf_counter()
        populate(stack, singles.name, args.jobs, 1)
        batch_id = populate(stack, batched.name, args.jobs, 500)
        print(f"stored 2 x {args.jobs} jobs in {time.perf_counter() - started:.1f} s", flush=True)
        own_job = other.create({"model": "m"}, Prefer="wait=10").headers["Location"]
        own_job_id = own_job.rsplit("/", 1)[1]

        cases = [
            ("singles", singles, "/v1/jobs?status=queued&limit=1"),
            ("singles", singles, "/v1/jobs?status=succeeded&limit=1"),
            ("singles", singles, "/v1/jobs?status=failed&limit=1"),
            ("singles", singles, "/v1/jobs?limit=1"),
            ("batch", batched, "/v1/jobs?status=queued&limit=1"),
            ("batch", batched, f"/v1/jobs?batch_id={batch_id}&status=queued&limit=1"),
            ("batch", batched, "/v1/jobs?status=succeeded&limit=1"),
        ]
        for label, tenant, path in cases:
            query = path.removeprefix("/v1/jobs")
            print(f"{label:8} {query:62} {ms(*timed(tenant, path, args.repeat))}", flush=True)
        idle, _ = other_tenant_reads(other, own_job_id, 5)
        print(f"other tenant's GET /v1/jobs/{{id}}, idle: {ms(idle)}")
        path = "/v1/jobs?status=queued&limit=1"
        loaded, failed = under_load(singles, other, own_job_id, path, 16)
        print(
            f"other tenant's GET /v1/jobs/{{id}}, 16 clients listing ?status=queued&limit=1: "
            f"{ms(loaded, failed)} ({statistics.median(loaded) / statistics.median(idle):.1f}x "
            "idle p50)"
        )


if __name__ == "__main__":
    main()
