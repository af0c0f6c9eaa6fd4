"""Synchronous creates: `Prefer: wait` latency p50/p99 at 1 and 8 concurrent
clients, over one raw insert+find round trip to the same store.

    .venv/bin/python -m bench.sync [--requests 300]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from bench.harness import assistant_body, deployment, percentile, raw_round_trip_seconds
from tests.stack import Tenant


def latencies(tenant: Tenant, clients: int, per_client: int) -> list[float]:
    results: list[float] = []
    lock = threading.Lock()

    def client(slot: int) -> None:
        own = Tenant(tenant.stack, tenant.name, tenant.api_key, tenant.webhook_secret)
        for i in range(per_client):
            started = time.perf_counter()
            response = own.create(assistant_body(slot * 1_000_000 + i), Prefer="wait=60")
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            with lock:
                results.append(elapsed)

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="per concurrency level")
    args = parser.parse_args()
    with deployment() as (stack, tenant):
        raw = raw_round_trip_seconds(stack, 500)
        raw_p50 = statistics.median(raw)
        print(
            f"raw insert+find round trip: p50 {raw_p50 * 1000:.2f} ms, "
            f"p99 {percentile(raw, 99) * 1000:.2f} ms"
        )
        for clients in (1, 8):
            values = latencies(tenant, clients, max(1, args.requests // clients))
            p50, p99 = statistics.median(values), percentile(values, 99)
            print(
                f"{clients} client(s): p50 {p50 * 1000:.1f} ms ({p50 / raw_p50:.1f}x raw), "
                f"p99 {p99 * 1000:.1f} ms ({p99 / raw_p50:.1f}x raw p50)"
            )


if __name__ == "__main__":
    main()
