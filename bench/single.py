"""Single creates: sustained rate accepted and finished, over raw insert_one/s.

Clients send `POST /v1/assistants` (202) as fast as they can for a while;
the rate counts only jobs that also finished, timed until the last one did,
so a growing backlog lowers it.

    .venv/bin/python -m bench.single [--clients 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import threading
import time

from bench.harness import assistant_body, deployment, raw_insert_one_rate
from tests.stack import Stack, Tenant, wait_until


def burst(tenant: Tenant, clients: int, seconds: float) -> tuple[int, float]:
    """Creates accepted by `clients` threads in `seconds`; returns (count, elapsed)."""
    accepted = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(slot: int) -> None:
        session_tenant = Tenant(tenant.stack, tenant.name, tenant.api_key, tenant.webhook_secret)
        i = 0
        while time.perf_counter() < deadline:
            response = session_tenant.create(assistant_body(slot * 1_000_000 + i))
            assert response.status_code == 202, response.text
            accepted[slot] += 1
            i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(accepted), time.perf_counter() - started


def finished_count(stack: Stack, tenant: Tenant) -> int:
    store = stack.store()
    try:
        return store.jobs.count_documents({"tenant": tenant.name, "status": "done"})
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with deployment() as (stack, tenant):
        raw = raw_insert_one_rate(stack, 2000)
        before = finished_count(stack, tenant)
        started = time.perf_counter()
        count, sending = burst(tenant, args.clients, args.seconds)
        wait_until(
            lambda: finished_count(stack, tenant) >= before + count, timeout=600, interval=0.05
        )
        total = time.perf_counter() - started
        raw_after = raw_insert_one_rate(stack, 2000)
        ceiling = (raw + raw_after) / 2
        print(f"raw insert_one: {ceiling:,.0f} docs/s")
        print(
            f"accepted: {count:,} in {sending:.1f} s = {count / sending:,.0f}/s "
            f"({args.clients} clients)"
        )
        print(
            f"accepted and finished: {count / total:,.0f}/s "
            f"(backlog drained {total - sending:.1f} s after the last send)"
        )
        print(f"single ratio: {count / total / ceiling:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
