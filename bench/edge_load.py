"""The edge under slow clients, a thousand waiters and a receiver that hangs.

Measures /healthz and another tenant's waited creates first on a quiet edge,
then with the attack held (80 slow-header clients, 20 slow bodies, 1,000
`Prefer: wait=60` requests, a tenant whose receiver never answers), and
prints both and their ratios:

    PYTHONPATH=. .venv/bin/python -m bench.edge_load [--probes 200] [--creates 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import percentile
from cli.embedded import start_mongo, start_valkey
from tests.attackers import crowds, timed_get
from tests.receiver import Hang, Receiver
from tests.stack import Servers, Stack, Tenant, wait_until
from tests.test_edge_load import KEYS, WAITERS, answers_within, attackers, queued_jobs


def measure(stack: Stack, victim: Tenant, probes: int, creates: int) -> tuple[list[float], ...]:
    health = [timed_get(stack.port, "/healthz", timeout=30) * 1000 for _ in range(probes)]
    made = []
    for i in range(creates):
        started = time.perf_counter()
        answer = victim.create({"model": "m", "name": f"c{i}"}, Prefer="wait=30")
        assert answer.status_code == 200, answer.text
        made.append((time.perf_counter() - started) * 1000)
    return health, made


def line(name: str, values: list[float]) -> str:
    return f"{name:<44}{statistics.median(values):>9.1f}{percentile(values, 99):>9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--creates", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        data = Path(tmp)
        valkey, mongo = start_valkey(data / "valkey"), start_mongo(data / "mongo")
        stack = Stack(Servers(mongo=mongo, valkey=valkey), data)
        try:
            stack.start_api()
            # As `dev` lays them out, but no bulk worker: the waited-on batches stay queued.
            stack.start_worker(
                "single", queues="single,maintenance", beat=True, pool="threads", concurrency=8
            )
            stack.start_worker("hooks", queues="webhooks", beat=False)
            victim = stack.new_tenant()
            quiet = measure(stack, victim, args.probes, args.creates)
            waiting = [stack.new_tenant() for _ in range(KEYS)]
            jobs = [queued_jobs(tenant, 20) for tenant in waiting]
            with Receiver() as hanging:
                hanging.then(*[Hang(300)] * 100)
                slow = stack.new_tenant()
                for _ in range(40):
                    slow.create({"model": "m"}, **{"Callback-URL": hanging.url()})
                with crowds(*attackers(stack.port, victim.api_key, waiting, jobs)) as attack:
                    settled = time.perf_counter()
                    wait_until(lambda: answers_within(stack.port, 1.0), timeout=120)
                    settle = time.perf_counter() - settled
                    attacked = measure(stack, victim, args.probes, args.creates)
                    held = sum(len(c.sockets) - c.answered() for c in attack[2:])
        finally:
            stack.stop()
            mongo.stop()
            valkey.stop()
    print(f"waiters held: {held} of {WAITERS}; the edge took {settle:.1f} s to take them in")
    print(f"{'':<44}{'p50 ms':>9}{'p99 ms':>9}")
    print(line("/healthz, quiet", quiet[0]))
    print(line("/healthz, under attack", attacked[0]))
    print(line("other tenant's waited create, quiet", quiet[1]))
    print(line("other tenant's waited create, under attack", attacked[1]))
    for name, index in (("healthz", 0), ("waited create", 1)):
        ratio = statistics.median(attacked[index]) / statistics.median(quiet[index])
        tail = percentile(attacked[index], 99) / percentile(quiet[index], 99)
        print(f"{name}: under attack / quiet = {ratio:.2f} at p50, {tail:.2f} at p99")


if __name__ == "__main__":
    main()
