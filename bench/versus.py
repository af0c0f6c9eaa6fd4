"""Single creates against a synchronous peer: the same creates, the same store, one run.

The peer (`bench.peer`) is a FastAPI app doing what a synchronous API does:
validate, one `insert_one`, answer 200. It runs under gunicorn with uvicorn
workers, as many processes as the edge has, beside a deployment laid out as
`assistant-ingest dev` lays it out, on the same SecantusDB server (its own
database). One load generator (`bench.loadgen`) drives all of them.

For each client count it measures, in turn:
  (a) the peer: 200s per second and their latency;
  (b) the service with `Prefer: wait=10`: a 200 is a created assistant;
  (c) the service's 202 path: accepted creates counted until every accepted
      job has finished, from the first send to the last finish (latency is
      the 202's own).

Each case's seconds are run in slices (`--rounds`, 3 by default), the three
cases' slices in turn, and each case is the sum of its slices: the machines
are shared, and a spell of slowness then weighs on every case alike.

Each case also reports the commands the store served per create (its
`serverStatus` opcounters, less its idle rate and the bench's own polls), and
the CPU per create of the service's own processes (edge, workers, Redis)
against the peer's.

    PYTHONPATH=. .venv/bin/python -m bench.versus [--seconds 5] [--clients 1,8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import peer
from bench.harness import (
    assistant_body,
    cpu_seconds,
    deployment,
    percentile,
    process_tree,
    raw_round_trip_seconds,
)
from bench.loadgen import Connection, Run, closed_loop, delayed_ack_suspects, histogram, post
from cli.embedded import free_port, wait_for_port
from tests.stack import Stack, Tenant

HOST = "127.0.0.1"
# A create is about this size, as in the other benches.
BODY_SIZE = 1000
# The service's own limit is policy, not capacity: lifted so no case meets it.
NO_RATE_LIMIT = "100000000/minute"
# How long the service's backlog may take to drain before the run is abandoned.
DRAIN_TIMEOUT = 300.0


@dataclass
class Case:
    label: str
    clients: int
    creates: int  # assistants created (c: accepted and finished)
    seconds: float  # the time the rate is over
    latencies: list[float]
    note: str = ""
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group
    # Commands the store served during the case (its opcounters), less what it
    # serves idle over as long, and less the bench's own reads (`polls`).
    commands: float = 0.0
    polls: int = 0

    @property
    def rate(self) -> float:
        return self.creates / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


class CpuMeter:
    """CPU seconds spent by each part of the run, to see where a case's time goes,
    and the commands the store served (`serverStatus` opcounters)."""

    def __init__(self, stack: Stack, peer_pid: int) -> None:
        self.store = stack.store()
        self.idle_commands_per_s = 0.0
        processes = stack.processes
        self.roots: dict[str, list[int]] = {
            "store": [stack.servers.mongo.process.pid],
            "edge": [processes["api"].pid],
            "workers": [p.pid for name, p in processes.items() if name.startswith("worker")],
            "redis": [stack.servers.valkey.process.pid],
            "peer": [peer_pid],
        }

    def read(self) -> dict[str, float]:
        used = {
            name: sum(cpu_seconds(pid) for root in roots for pid in process_tree(root))
            for name, roots in self.roots.items()
        }
        # This process alone: every server above is its child.
        used["loadgen"] = cpu_seconds(os.getpid())
        return used

    def commands(self) -> int:
        counters = self.store.client.admin.command("serverStatus")["opcounters"]
        return sum(int(counters[name]) for name in COUNTED)

    def idle(self, seconds: float) -> dict[str, float]:
        """What the deployment spends with no load (periodic sweeps, heartbeats)."""
        before, commands = self.read(), self.commands()
        time.sleep(seconds)
        after = self.read()
        self.idle_commands_per_s = (self.commands() - commands - 1) / seconds
        return {name: max(0.0, after[name] - before[name]) for name in after}

    def measure(self, case: Callable[..., Case], *args: Any) -> Case:
        before, commands, started = self.read(), self.commands(), time.perf_counter()
        result = case(*args)
        after, wall = self.read(), time.perf_counter() - started
        result.cpu = {name: max(0.0, after[name] - before[name]) for name in after}
        served = self.commands() - commands - 1  # less the serverStatus before
        result.commands = max(0.0, served - result.polls - self.idle_commands_per_s * wall)
        return result

    def close(self) -> None:
        self.store.close()


# The store's opcounters: every command a client sends is one of these.
COUNTED = ("insert", "query", "update", "delete", "getmore", "command")
# What the service runs on, beside the store: its own CPU, against the peer's.
SERVICE = ("edge", "workers", "redis")


def edge_workers(stack: Stack) -> int:
    """The edge's process count, read from how the deployment started it
    (`assistant-ingest api` starts 2 when not told)."""
    command = stack.processes["api"].args
    args = [str(arg) for arg in command] if isinstance(command, list | tuple) else []
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 2


def body_bytes(slot: int, i: int) -> bytes:
    return json.dumps(assistant_body(slot * 1_000_000 + i, BODY_SIZE)).encode()


def check_peer(port: int) -> None:
    """The peer answers as the contract says: 200 with the assistant, FastAPI's 422."""
    connection = Connection(HOST, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = connection.exchange(post("/v1/assistants", HOST, body_bytes(999, 0)))
            break
        except OSError:
            # The gunicorn master listens before its workers have started.
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assistant = json.loads(reply.body)
    assert reply.status == 200, reply
    assert assistant["object"] == "assistant" and assistant["id"].startswith("asst_"), assistant
    assert len(assistant["_id"]) == 24, assistant
    bad = connection.exchange(post("/v1/assistants", HOST, b'{"name": "x", "extra": 1}'))
    assert bad.status == 422, bad
    types = sorted(error["type"] for error in json.loads(bad.body)["detail"])
    assert types == ["extra_forbidden", "missing"], types
    connection.close()


def run_peer(port: int, clients: int, seconds: float) -> Case:
    run = closed_loop(
        HOST, port, clients, seconds, lambda s, i: post("/v1/assistants", HOST, body_bytes(s, i))
    )
    others = {status: n for status, n in run.statuses.items() if status != 200}
    note = f"non-200: {others}" if others else ""
    label = "(a) peer: FastAPI, insert_one"
    return Case(label, clients, run.count(200), run.elapsed, run.latencies, note)


def service_request(
    tenant: Tenant, host: str, headers: dict[str, str]
) -> Callable[[int, int], bytes]:
    auth = {"Authorization": f"Bearer {tenant.api_key}", **headers}
    return lambda s, i: post("/v1/assistants", host, body_bytes(s, i), auth)


def run_waited(stack: Stack, clients: int, seconds: float) -> Case:
    tenant = stack.new_tenant()
    run = closed_loop(
        HOST, stack.port, clients, seconds, service_request(tenant, HOST, {"Prefer": "wait=10"})
    )
    others = {status: n for status, n in run.statuses.items() if status != 200}
    note = f"non-200: {others}" if others else ""
    return Case(
        "(b) service: Prefer: wait=10", clients, run.count(200), run.elapsed, run.latencies, note
    )


def run_accepted(stack: Stack, clients: int, seconds: float) -> Case:
    tenant = stack.new_tenant()
    run: Run = closed_loop(
        HOST,
        stack.port,
        clients,
        seconds,
        service_request(tenant, HOST, {}),
        keep=lambda reply: reply.status == 202,
    )
    # Creates accepted together share a unit: jobs are found by item.
    accepted = [json.loads(reply.body)["id"] for reply in run.replies]
    store = stack.store()
    try:
        # Ask only about the jobs not yet seen finished, by _id, and less often
        # the more there are: a poll costs the store about a lookup per pending
        # job, so watching takes a small, steady share of the store however long
        # the backlog, and the last few jobs are still seen finish within ~10 ms.
        pending = accepted
        polls = 0
        while True:
            polls += 1
            unfinished = store.jobs.find(
                {"items.id": {"$in": pending}, "status": {"$ne": "done"}}, {"items.id": 1}
            )
            waiting = set(pending)
            pending = [i["id"] for doc in unfinished for i in doc["items"] if i["id"] in waiting]
            now = time.perf_counter()
            if not pending:
                break
            if now - run.started > seconds + DRAIN_TIMEOUT:
                raise AssertionError(f"{len(pending)} of {len(accepted)} accepted jobs unfinished")
            time.sleep(min(0.5, max(0.01, 0.001 * len(pending))))
        mine = set(accepted)
        succeeded = sum(
            code == 200
            for doc in store.jobs.find({"items.id": {"$in": accepted}}, {"items.id": 1, "codes": 1})
            for item, code in zip(doc["items"], doc["codes"], strict=True)
            if item["id"] in mine
        )
    finally:
        store.close()
    total = now - run.started
    others = {status: n for status, n in run.statuses.items() if status != 202}
    note = (
        f"p50/p99 of the 202; accepted {len(accepted) / run.elapsed:,.0f}/s; last job finished "
        f"{total - run.elapsed:.1f} s after the last 202; {succeeded}/{len(accepted)} succeeded"
    )
    if others:
        note += f"; non-202: {others}"
    case = Case("(c) service: 202, until finished", clients, succeeded, total, run.latencies, note)
    case.polls = polls + 1  # and the count of those that succeeded
    return case


def merged(slices: list[Case]) -> Case:
    """One case from its slices, run in turn with the other cases' (`--rounds`):
    each sum over them, so a drift of the machine's speed weighs on every case
    alike instead of on whichever ran while it lasted."""
    first = slices[0]
    case = Case(
        first.label,
        first.clients,
        sum(s.creates for s in slices),
        sum(s.seconds for s in slices),
        [latency for s in slices for latency in s.latencies],
        " | ".join(s.note for s in slices if s.note),
    )
    for s in slices:
        for name, seconds in s.cpu.items():
            case.cpu[name] = case.cpu.get(name, 0.0) + seconds
        case.commands += s.commands
        case.polls += s.polls
    return case


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def report(cases: list[Case]) -> None:
    print(f"{'clients':>7}  {'case':<34} {'creates/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for case in cases:
        print(
            f"{case.clients:>7}  {case.label:<34} {case.rate:>10,.0f} "
            f"{case.p50 * 1000:>8.1f} {case.p99 * 1000:>8.1f}"
            + (f"  {case.note}" if case.note else "")
        )
    by_key = {(case.label[:3], case.clients): case for case in cases}
    print("ratios:")
    for clients in sorted({case.clients for case in cases}):
        a, b, c = (by_key[key, clients] for key in ("(a)", "(b)", "(c)"))
        print(
            f"  {clients} client(s): (c)/(a) creates/s = {c.rate / a.rate:.2f}, "
            f"(b)/(a) creates/s = {b.rate / a.rate:.2f}, (b) p50 / (a) p50 = {b.p50 / a.p50:.2f}"
        )
    print("CPU seconds used during each case, by process group (per create in brackets, ms):")
    for case in cases:
        parts = " ".join(
            f"{name} {seconds:.1f} [{seconds / max(case.creates, 1) * 1000:.1f}]"
            for name, seconds in case.cpu.items()
            if seconds >= 0.05
        )
        print(f"  {case.clients} {case.label[:3]} over {case.seconds:.1f} s: {parts}")
    print("per create: store commands, and CPU of the service (edge, workers, Redis) or the peer")
    for case in cases:
        own = sum(
            case.cpu.get(name, 0.0) for name in (("peer",) if "(a)" in case.label else SERVICE)
        )
        creates = max(case.creates, 1)
        print(
            f"  {case.clients} {case.label[:3]}: {case.commands / creates:.2f} commands, "
            f"own CPU {own / creates * 1000:.2f} ms"
        )
    for clients in sorted({case.clients for case in cases}):
        a, c = by_key["(a)", clients], by_key["(c)", clients]
        peer_cpu = a.cpu.get("peer", 0.0) / max(a.creates, 1)
        service_cpu = sum(c.cpu.get(name, 0.0) for name in SERVICE) / max(c.creates, 1)
        print(
            f"  {clients} client(s), (c) against (a): {c.commands / max(c.creates, 1):.2f} vs "
            f"{a.commands / max(a.creates, 1):.2f} commands a create (goal at 8: at most 1); "
            f"own CPU {service_cpu / peer_cpu:.2f}x the peer's (goal: within 2x)"
        )
    print(
        "latency histograms (ms bucket:count). A delayed-ACK stall on some requests shows as"
        " suspects, requests ~40 ms over the median (clear where the spread is narrow, as"
        " with 1 client); on every request, as a minimum above 40 ms:"
    )
    for case in cases:
        suspects = delayed_ack_suspects(case.latencies, case.p50)
        print(
            f"  {case.clients} {case.label[:3]} min {min(case.latencies) * 1000:.1f} ms, "
            f"suspects {suspects}: {histogram(case.latencies)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5, help="of load per case")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="each case's seconds in this many slices, the cases' slices run in turn",
    )
    parser.add_argument(
        "--journaled-peer",
        action="store_true",
        help="the peer's insert waits for the journal, as the service's 202 write does",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    counts = [int(n) for n in args.clients.split(",")]
    with deployment(RATE_LIMIT=NO_RATE_LIMIT) as (stack, _tenant):
        workers = edge_workers(stack)
        port = free_port()
        process = peer.serve(
            port,
            f"{stack.servers.mongo_base}/{stack.name}_peer",
            workers,
            stack.logs / f"{stack.name}-peer.log",
            journaled=args.journaled_peer,
        )
        try:
            wait_for_port(port, process, timeout=60)
            check_peer(port)
            # Warm both servers' connection pools and code paths at every
            # concurrency before anything is timed.
            for clients in counts:
                run_peer(port, clients, 0.5)
                run_waited(stack, clients, 0.5)
            raw = raw_round_trip_seconds(stack, 300)
            print(
                f"{os.cpu_count()} cores; edge and peer {workers} processes each; "
                f"{args.seconds:g} s of load a case, in {args.rounds} slices run in turn "
                "with the other cases'; peer insert "
                f"{'journaled' if args.journaled_peer else 'with the default write concern'}"
            )
            print(
                f"raw insert_one + find_one by _id: p50 {statistics.median(raw) * 1000:.2f} ms, "
                f"p99 {percentile(raw, 99) * 1000:.2f} ms"
            )
            meter = CpuMeter(stack, process.pid)
            idle = meter.idle(2)
            print(
                "CPU seconds over 2 s idle: "
                + " ".join(f"{name} {seconds:.2f}" for name, seconds in idle.items())
            )
            cases: list[Case] = []
            per_slice = args.seconds / args.rounds
            for clients in counts:
                slices: list[list[Case]] = [[], [], []]
                for _ in range(args.rounds):
                    slices[0].append(meter.measure(run_peer, port, clients, per_slice))
                    slices[1].append(meter.measure(run_waited, stack, clients, per_slice))
                    slices[2].append(meter.measure(run_accepted, stack, clients, per_slice))
                cases.extend(merged(each) for each in slices)
            report(cases)
            meter.close()
        finally:
            stop(process)


if __name__ == "__main__":
    main()
