"""What a request costs the edge's framework, the edge's own hooks and a create,
against the peer's framework and the peer's create: CPU per request, one run.

Targets, each driven by the same closed-loop load generator (`bench.loadgen`),
their turns interleaved over `--rounds`:
  bare Flask   gunicorn's gevent worker serving a Flask view that decodes the
               body and answers 202 (`bench.floor_apps`): the edge's framework
  bare FastAPI the same view under uvicorn: the peer's framework
  edge hooks   the edge's `GET /v1/models`: authentication, the rate limit, the
               request id, metrics, the access line; no store or broker
  edge create  the edge's `POST /v1/assistants` answered 202 (the group's
               insert and message; the workers run the creates meanwhile)
  peer create  the peer's `POST /v1/assistants`: validate, `insert_one`, 200

Each target runs as many processes as the edge. The CPU is the target's
processes' own (the edge: its gunicorn processes, not the workers or Redis);
a bare app and the edge's hooks run on an otherwise idle machine, the creates
beside the store (and the edge's beside the workers) they make busy.

    PYTHONPATH=. .venv/bin/python -m bench.floors [--seconds 4] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import peer
from bench.harness import cpu_seconds, deployment, process_tree
from bench.loadgen import closed_loop, post
from bench.versus import HOST, NO_RATE_LIMIT, body_bytes, edge_workers, service_request, stop
from cli.embedded import free_port, wait_for_port


@dataclass
class Target:
    label: str
    port: int
    pid: int  # the root of the target's processes
    status: int  # what a request is answered when it did its work
    make: Callable[[int, int], bytes]
    requests: int = 0
    cpu: float = 0.0

    @property
    def ms_per_request(self) -> float:
        return self.cpu / max(self.requests, 1) * 1000


def serve_bare(
    app: str, worker_class: str, workers: int, log: Path
) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    process = peer.gunicorn(f"bench.floor_apps:{app}", port, workers, log, worker_class)
    wait_for_port(port, process, timeout=60)
    return port, process


def bare(slot: int, i: int) -> bytes:
    """A create as the bare apps and the peer are sent it: no key."""
    return post("/v1/assistants", HOST, body_bytes(slot, i))


def measure(target: Target, clients: int, seconds: float) -> None:
    pids = process_tree(target.pid)
    before = sum(cpu_seconds(pid) for pid in pids)
    run = closed_loop(HOST, target.port, clients, seconds, target.make)
    target.cpu += sum(cpu_seconds(pid) for pid in pids) - before
    target.requests += run.count(target.status)
    others = {status: n for status, n in run.statuses.items() if status != target.status}
    if others:
        raise AssertionError(f"{target.label}: answered {others}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4, help="of load per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with deployment(RATE_LIMIT=NO_RATE_LIMIT) as (stack, _tenant):
        workers = edge_workers(stack)
        tenant = stack.new_tenant()
        started: list[subprocess.Popen[bytes]] = []
        try:
            flask_port, flask = serve_bare(
                "flask_app", "gevent", workers, stack.logs / "floor-flask.log"
            )
            started.append(flask)
            fastapi_port, fastapi = serve_bare(
                "fastapi_app",
                peer.UVICORN_WORKER,
                workers,
                stack.logs / "floor-fastapi.log",
            )
            started.append(fastapi)
            peer_port = free_port()
            peer_process = peer.serve(
                peer_port,
                f"{stack.servers.mongo_base}/{stack.name}_peer",
                workers,
                stack.logs / "floor-peer.log",
            )
            started.append(peer_process)
            wait_for_port(peer_port, peer_process, timeout=60)
            auth = f"Authorization: Bearer {tenant.api_key}\r\n"
            models = f"GET /v1/models HTTP/1.1\r\nHost: {HOST}\r\n{auth}\r\n".encode()
            edge_pid = stack.processes["api"].pid
            targets = [
                Target("bare Flask (gunicorn, gevent)", flask_port, flask.pid, 202, bare),
                Target("bare FastAPI (uvicorn)", fastapi_port, fastapi.pid, 202, bare),
                Target(
                    "edge hooks: GET /v1/models", stack.port, edge_pid, 200, lambda s, i: models
                ),
                Target(
                    "edge create: 202",
                    stack.port,
                    edge_pid,
                    202,
                    service_request(tenant, HOST, {}),
                ),
                Target("peer create: 200", peer_port, peer_process.pid, 200, bare),
            ]
            for target in targets:  # warm every path first
                closed_loop(HOST, target.port, args.clients, 0.5, target.make)
            for round_ in range(args.rounds):
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    measure(target, args.clients, args.seconds)
        finally:
            for process in started:
                stop(process)
    print(
        f"{os.cpu_count()} cores; {args.clients} clients; {workers} process(es) a target; "
        f"{args.rounds} rounds of {args.seconds:g} s a target, in turn"
    )
    print(f"{'target':<34} {'requests':>9} {'CPU ms a request':>17}")
    for target in targets:
        print(f"{target.label:<34} {target.requests:>9,} {target.ms_per_request:>17.3f}")
    flask_, fastapi_, hooks, create, peer_create = (t.ms_per_request for t in targets)
    print("ratios:")
    print(f"  bare Flask / bare FastAPI: {flask_ / fastapi_:.2f}x (the frameworks alone)")
    print(f"  edge hooks / bare Flask: {hooks / flask_:.2f}x (the edge's per-request work)")
    print(f"  edge create / peer create: {create / peer_create:.2f}x (the edge's part only)")


if __name__ == "__main__":
    main()
