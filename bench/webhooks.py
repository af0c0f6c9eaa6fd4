"""A tenant whose webhook receiver hangs, and what it does to another tenant.

Tenant B (or `--hanging-tenants` of them) makes 20 creates whose callback never
answers (each attempt holds its sender for the 10 s deadline); then tenant A
makes `Prefer: wait` creates with
a callback that answers at once, for `--seconds`. Printed for each layout of
the webhooks worker: A's waited creates and the time from each answer to its
webhook's arrival (p50, p99, max), how many of A's webhooks had not arrived
20 s after the last create, and the webhooks worker's memory.

    PYTHONPATH=. .venv/bin/python -m bench.webhooks [--seconds 30] [--layouts ...]

`--origins` runs the other row instead, with the production layout (creates
on one worker, deliveries on a threads pool of 32) and the service's attempt
deadline (10 s): tenant B's 240 creates call back to 12 ports that accept and
never answer, and tenant A's webhooks (creates without waiting, a callback that
answers at once) are timed from each 202 to the webhook's arrival, first with
nothing else running (idle), then beside B; for each `--tenant-caps` value
(WEBHOOK_TENANT_CONCURRENCY; 0 is no cap, as before there was one).

    PYTHONPATH=. .venv/bin/python -m bench.webhooks --origins [--tenant-caps 0 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.harness import QUIET, percentile, process_tree, rss_kib, warm_up
from cli.embedded import start_mongo, start_valkey
from tests.receiver import Hang, Received, Receiver, Tally
from tests.stack import Servers, Stack, Tenant

# name: (queues of the creates' worker, webhooks worker as (pool, processes or
# threads) or None when the creates' worker also takes deliveries, endpoint cap)
LAYOUTS: dict[str, tuple[str, tuple[str, int] | None, int]] = {
    "shared-prefork2-nocap": ("single,bulk,webhooks,maintenance", None, 0),
    "own-prefork2-nocap": ("single,bulk,maintenance", ("prefork", 2), 0),
    "own-prefork2-cap1": ("single,bulk,maintenance", ("prefork", 2), 1),
    "own-prefork8-cap4": ("single,bulk,maintenance", ("prefork", 8), 4),
    "own-threads32-cap4": ("single,bulk,maintenance", ("threads", 32), 4),
}


@contextmanager
def layout(name: str, **settings: str) -> Iterator[Stack]:
    creates_queues, webhooks, cap = LAYOUTS[name]
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        data = Path(tmp)
        valkey = start_valkey(data / "valkey")
        mongo = start_mongo(data / "mongo")
        overrides = {**QUIET, "WEBHOOK_ENDPOINT_CONCURRENCY": str(cap), **settings}
        stack = Stack(Servers(mongo=mongo, valkey=valkey), data, overrides)
        try:
            stack.start_api()
            stack.spawn("creates", "worker", "--queues", creates_queues, "--beat")
            if webhooks is not None:
                pool, concurrency = webhooks
                stack.spawn(
                    "webhooks",
                    "worker",
                    "--queues",
                    "webhooks",
                    "--pool",
                    pool,
                    "--concurrency",
                    str(concurrency),
                )
            warm_up(stack.new_tenant("warm-up"))
            yield stack
        finally:
            stack.stop()
            mongo.stop()
            valkey.stop()


def run(name: str, seconds: float, hanging_tenants: int) -> None:
    with layout(name) as stack, Receiver() as stuck, Receiver() as fine:
        stuck.default = Hang(3600)
        other = stack.new_tenant("a")
        for index in range(hanging_tenants):
            hanging = stack.new_tenant(f"b{index}")
            for _ in range(20):
                hanging.create({"model": "m"}, **{"Callback-URL": stuck.url()})
        stuck.wait_for(1, timeout=60)
        waited: list[float] = []
        answered_at: dict[str, float] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = other.create(
                {"model": "m"}, Prefer="wait=30", **{"Callback-URL": fine.url()}
            )
            waited.append(time.monotonic() - started)
            answered_at[response.headers["Location"].rsplit("/", 1)[1]] = time.time()
        settle = time.monotonic() + 20
        while len(fine.requests) < len(answered_at) and time.monotonic() < settle:
            time.sleep(0.2)
        lags = []
        for request in fine.requests:
            lags.append(request.at - answered_at[json.loads(request.body)["data"]["id"]])
        missing = len(answered_at) - len(lags)
        worker = stack.processes.get("webhooks") or stack.processes["creates"]
        rss = sum(rss_kib(pid) for pid in process_tree(worker.pid)) / 1024
        print(
            f"{name:24} creates {len(waited):4}: p50 {statistics.median(waited) * 1000:6.0f} ms, "
            f"p99 {percentile(waited, 99) * 1000:6.0f} ms | webhooks: "
            + (
                f"p50 {statistics.median(lags):5.2f} s, p99 {percentile(lags, 99):5.2f} s, "
                f"max {max(lags):5.2f} s"
                if len(lags) >= 2
                else "none"
            )
            + f", {missing} not arrived | hanging receiver held {stuck.max_in_flight} at once"
            f" | webhooks worker RSS {rss:.0f} MiB",
            flush=True,
        )


ORIGINS, EACH = 12, 20
# The service's own deadline and schedule, not the tests' short ones.
SERVICE_WEBHOOKS = {"WEBHOOK_TIMEOUT_SECONDS": "10", "WEBHOOK_SCHEDULE": "0,5,300,1800"}


def webhook_lags(tenant: Tenant, fine: Receiver, seconds: float) -> tuple[list[float], int]:
    """Seconds from each 202 to its webhook's arrival, and how many never came
    (within 20 s of the last create)."""
    answered_at: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = tenant.create({"model": "m"}, **{"Callback-URL": fine.url()})
        answered_at[response.json()["id"]] = time.time()
        time.sleep(0.2)
    settle = time.monotonic() + 20

    def mine() -> list[Received]:
        return [r for r in fine.requests if json.loads(r.body)["data"]["id"] in answered_at]

    while len(mine()) < len(answered_at) and time.monotonic() < settle:
        time.sleep(0.2)
    lags = [r.at - answered_at[json.loads(r.body)["data"]["id"]] for r in mine()]
    return lags, len(answered_at) - len(lags)


def summary(lags: list[float], missing: int) -> str:
    if len(lags) < 2:
        return f"none arrived, {missing} missing"
    return (
        f"p50 {statistics.median(lags):6.2f} s, p99 {percentile(lags, 99):6.2f} s "
        f"({len(lags)}, {missing} missing)"
    )


def run_origins(tenant_cap: int, seconds: float) -> None:
    settings = {**SERVICE_WEBHOOKS, "WEBHOOK_TENANT_CONCURRENCY": str(tenant_cap)}
    with layout("own-threads32-cap4", **settings) as stack, ExitStack() as receivers:
        tally = Tally()
        stuck = [receivers.enter_context(Receiver(tally=tally)) for _ in range(ORIGINS)]
        fine = receivers.enter_context(Receiver())
        for receiver in stuck:
            receiver.default = Hang(3600)
        healthy = stack.new_tenant("a")
        idle = webhook_lags(healthy, fine, seconds)
        hanging = stack.new_tenant("b")
        for receiver in stuck:
            for _ in range(EACH):
                hanging.create({"model": "m"}, **{"Callback-URL": receiver.url()})
        time.sleep(3)  # the attempts reach the receivers and hang
        beside = webhook_lags(healthy, fine, seconds)
        held = tally.most
        print(
            f"tenant cap {tenant_cap or 'none':>4} | A's webhooks idle: {summary(*idle)} | "
            f"beside B's {ORIGINS} hanging origins: {summary(*beside)} | "
            f"B's attempts held at once {held}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--hanging-tenants", type=int, default=1)
    parser.add_argument("--origins", action="store_true", help="the 12 hanging origins row")
    parser.add_argument("--tenant-caps", nargs="*", type=int, default=[0, 8])
    args = parser.parse_args()
    if args.origins:
        print(f"one tenant's {ORIGINS * EACH} creates call back to {ORIGINS} hanging origins")
        for cap in args.tenant_caps:
            run_origins(cap, args.seconds)
        return
    print(f"{args.hanging_tenants} tenant(s) with 20 creates each to a receiver that hangs")
    for name in args.layouts:
        run(name, args.seconds, args.hanging_tenants)


if __name__ == "__main__":
    main()
