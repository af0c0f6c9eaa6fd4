"""The edge under attack by one tenant or one address, as the other tenants see it.

Each row starts a deployment of its own (the edge under gunicorn, 2 gevent
processes; a `single` worker; a bulk worker where the row needs one), measures
`/healthz` and another tenant's waited creates (`Prefer: wait=30`) on the quiet
edge, then again with the attack held, and prints both, their ratios, and what
the attack itself was answered:

    PYTHONPATH=. .venv/bin/python -m bench.edge_load ROW [--probes 100] [--creates 20]

Rows:

- `waiters`: 80 slow-header clients, 20 slow bodies, 1,000 `Prefer: wait=60`
  requests and a tenant whose receiver never answers.
- `idle`: 700 connections without a key from one address, opened again as the
  edge closes them; the probes and creates come from that same address (a NAT).
- `idle-proxy`: the same through a proxy the edge trusts (FORWARDED_ALLOW_IPS):
  the idle connections and the other clients' requests come from the proxy's
  address, each request naming its client in X-Forwarded-For.
- `trickle`: one create whose body is sent a byte every 10 s: how long the
  edge holds it.
- `streams`: `--streams` (default 200; the issue measured 1,000) readers of a
  5,000-line batch's results (1 KB instructions) from 4 addresses, each
  reading 64 bytes every 5 s.
- `dryruns`: 6 clients (6 keys) looping 99 MiB apply dry runs (`--mib`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import percentile
from cli.embedded import start_mongo, start_valkey
from tests.attackers import Crowd, connect, crowds, request_head
from tests.receiver import Hang, Receiver
from tests.stack import Servers, Stack, Tenant, wait_until
from tests.test_edge_load import KEYS, WAITERS, answers_within, attackers, queued_jobs

PROXY = "127.0.0.81"


class Probe:
    """Requests as one client sends them: from `source`, through the proxy when
    `forwarded_for` is given."""

    def __init__(self, port: int, source: str = "127.0.0.1", forwarded_for: str | None = None):
        self.port, self.source, self.forwarded_for = port, source, forwarded_for

    def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, float]:
        """The status (0 when the connection failed) and the seconds it took."""
        if self.forwarded_for is not None:
            headers = {**headers, "X-Forwarded-For": self.forwarded_for}
        started = time.perf_counter()
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=60, source_address=(self.source, 0)
        )
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except OSError:
            status = 0
        finally:
            conn.close()
        return status, time.perf_counter() - started


BUDGET = [180.0]  # seconds a measurement may take; what it did not send is counted


def measure(probe: Probe, victim: Tenant, probes: int, creates: int) -> dict[str, Any]:
    health: list[float] = []
    made: list[float] = []
    failed: list[Any] = []
    # Half the budget for each kind, so a hung /healthz still leaves creates measured.
    ends = time.monotonic() + BUDGET[0] / 2
    for _ in range(probes):
        if time.monotonic() > ends:
            failed.append("not sent (budget)")
            continue
        status, seconds = probe.send("GET", "/healthz", {})
        (health if status == 200 else failed).append(seconds * 1000)
        if status != 200:
            failed[-1] = status
    ends = time.monotonic() + BUDGET[0] / 2
    for i in range(creates):
        if time.monotonic() > ends:
            failed.append("not sent (budget)")
            continue
        status, seconds = probe.send(
            "POST",
            "/v1/assistants",
            {
                "Authorization": f"Bearer {victim.api_key}",
                "Content-Type": "application/json",
                "Prefer": "wait=30",
            },
            json.dumps({"model": "m", "name": f"c{i}"}).encode(),
        )
        (made if status == 200 else failed).append(seconds * 1000)
        if status != 200:
            failed[-1] = status
    return {"health": health, "made": made, "failed": failed}


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<46}{'-':>9}{'-':>9}"
    return f"{name:<46}{statistics.median(values):>9.1f}{percentile(values, 99):>9.1f}"


def report(quiet: dict[str, Any], attacked: dict[str, Any]) -> None:
    print(f"{'':<46}{'p50 ms':>9}{'p99 ms':>9}")
    print(line("/healthz, quiet", quiet["health"]))
    print(line("/healthz, under attack", attacked["health"]))
    print(line("other tenant's waited create, quiet", quiet["made"]))
    print(line("other tenant's waited create, under attack", attacked["made"]))
    for name, key in (("healthz", "health"), ("waited create", "made")):
        if attacked[key] and quiet[key]:
            ratio = statistics.median(attacked[key]) / statistics.median(quiet[key])
            tail = percentile(attacked[key], 99) / percentile(quiet[key], 99)
            print(f"{name}: under attack / quiet = {ratio:.2f} at p50, {tail:.2f} at p99")
    refused = attacked["failed"]
    statuses = {s: refused.count(s) for s in set(refused)}
    print(f"probes and creates not answered 200 under attack: {len(refused)} {statuses or ''}")


@contextlib.contextmanager
def deployment(overrides: dict[str, str], bulk: bool = False) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        data = Path(tmp)
        valkey, mongo = start_valkey(data / "valkey"), start_mongo(data / "mongo")
        stack = Stack(Servers(mongo=mongo, valkey=valkey), data, overrides=overrides)
        stack.mongo_pid = mongo.process.pid  # type: ignore[attr-defined]
        try:
            stack.start_api()
            # As `dev` lays them out.
            stack.start_worker(
                "single", queues="single,maintenance", beat=True, pool="threads", concurrency=8
            )
            stack.start_worker("hooks", queues="webhooks", beat=False)
            if bulk:
                stack.start_worker("bulk", queues="bulk", beat=False)
            yield stack
        finally:
            stack.stop()
            mongo.stop()
            valkey.stop()


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    pids = [pid]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout
        pids += [int(p) for p in found.split()]
    total = 0
    for each in pids:
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{each}/status").read_text().splitlines():
                if row.startswith("VmRSS:"):
                    total += int(row.split()[1])
    return total / 1024


# -- rows -------------------------------------------------------------------


def row_waiters(args: argparse.Namespace) -> None:
    # As tests/test_edge_load.py sets it up: no small-batch lane, so the batches
    # the waiters wait on stay queued (there is no bulk worker), and a store
    # deadline long enough for the 1,000 waiters' first reads of this store.
    with deployment({"EXPRESS_BATCH_LINES": "0", "STORE_DEADLINE_MS": "30000"}) as stack:
        victim = stack.new_tenant()
        probe = Probe(stack.port)
        quiet = measure(probe, victim, args.probes, args.creates)
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
                attacked = measure(probe, victim, args.probes, args.creates)
                held = sum(len(c.sockets) - c.answered() for c in attack[2:])
    print(f"waiters held: {held} of {WAITERS}; the edge took {settle:.1f} s to take them in")
    report(quiet, attacked)


class Reopening:
    """`count` idle connections from `source` (nothing sent), each closed by
    the edge opened again within a second, until closed."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.crowd = Crowd(port, source, b"").open(count)
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(1):
            for index, sock in enumerate(self.crowd.sockets):
                sock.setblocking(False)
                try:
                    closed = sock.recv(1, socket.MSG_PEEK) is not None
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    with contextlib.suppress(OSError):
                        self.crowd.sockets[index] = connect(self.crowd.port, self.crowd.source)
                        self.reopened += 1
                else:
                    sock.setblocking(True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.crowd.close()


def row_idle(args: argparse.Namespace, proxied: bool) -> None:
    overrides = {"FORWARDED_ALLOW_IPS": PROXY} if proxied else {}
    source = PROXY if proxied else "127.0.0.80"
    with deployment(overrides) as stack:
        victim = stack.new_tenant()
        probe = Probe(stack.port, source, "198.51.100.20" if proxied else None)
        quiet = measure(probe, victim, args.probes, args.creates)
        idle = Reopening(stack.port, source, args.idle)
        try:
            time.sleep(2)
            attacked = measure(probe, victim, args.probes, args.creates)
        finally:
            idle.close()
    where = "through the trusted proxy" if proxied else "from one address"
    print(f"{args.idle} idle connections without a key {where}; reopened {idle.reopened}")
    report(quiet, attacked)


def row_trickle(args: argparse.Namespace) -> None:
    with deployment({}) as stack:
        victim = stack.new_tenant()
        probe = Probe(stack.port)
        quiet = measure(probe, victim, args.probes, args.creates)
        head = request_head(
            "POST",
            "/v1/assistants",
            {"Authorization": f"Bearer {victim.api_key}", "Content-Type": "application/json"},
            content_length=400,
        )
        trickle = connect(stack.port, "127.0.0.83")
        trickle.sendall(head)
        started = time.monotonic()
        attacked = measure(probe, victim, args.probes, args.creates)
        answer, cut, next_byte = b"", None, started
        trickle.settimeout(1)
        while time.monotonic() - started < args.trickle_seconds:
            if time.monotonic() >= next_byte:
                next_byte += 10
                with contextlib.suppress(OSError):
                    trickle.sendall(b" ")
            try:
                chunk = trickle.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            answer += chunk
            if not chunk:
                cut = time.monotonic() - started
                break
        trickle.close()
    status = answer.split(b"\r\n", 1)[0].decode() if answer else "(closed, no answer)"
    if cut is None:
        print(f"trickled body (a byte every 10 s): still held after {args.trickle_seconds} s")
    else:
        print(f"trickled body (a byte every 10 s): cut after {cut:.1f} s with {status}")
    report(quiet, attacked)


def row_streams(args: argparse.Namespace) -> None:
    with deployment({}, bulk=True) as stack:
        victim = stack.new_tenant()
        owner = stack.new_tenant()
        probe = Probe(stack.port)
        lines = [
            {"custom_id": f"r{i}", "body": {"model": "m", "instructions": "x" * 1000}}
            for i in range(args.lines)
        ]
        data = b"".join(json.dumps(one).encode() + b"\n" for one in lines)
        batch = owner.request(
            "POST", "/v1/batches", data=data, headers={"Content-Type": "application/x-ndjson"}
        ).json()
        wait_until(
            lambda: (
                owner.request("GET", f"/v1/batches/{batch['id']}").json()["status"] == "completed"
            ),
            timeout=600,
            interval=1,
        )
        api_pid = stack.processes["api"].pid
        mongo_pid = stack.mongo_pid  # type: ignore[attr-defined]
        memory = {"edge, quiet": rss_mib(api_pid), "store, quiet": rss_mib(mongo_pid)}
        quiet = measure(probe, victim, args.probes, args.creates)
        auth = {"Authorization": f"Bearer {owner.api_key}"}
        head = request_head("GET", f"/v1/batches/{batch['id']}/results", auth)
        readers: list[socket.socket] = []
        firsts: dict[int, bytes] = {}
        stop = threading.Event()
        for i in range(args.streams):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # A small window: the edge's writes block soon, as a slow reader's do.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((f"127.0.0.{90 + i % 4}", 0))
            sock.settimeout(10)
            try:
                sock.connect(("127.0.0.1", stack.port))
                sock.sendall(head)
            except OSError:
                sock.close()
                continue
            readers.append(sock)

        def read_slowly() -> None:
            while not stop.wait(5):
                for index, sock in enumerate(readers):
                    with contextlib.suppress(OSError):
                        data = sock.recv(64)
                        firsts.setdefault(index, data)

        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        try:
            time.sleep(10)
            attacked = measure(probe, victim, args.probes, args.creates)
            memory["edge, streams held"] = rss_mib(api_pid)
            memory["store, streams held"] = rss_mib(mongo_pid)
        finally:
            stop.set()
            reader.join(10)
            for sock in readers:
                sock.close()
        time.sleep(10)
        memory["edge, 10 s after"] = rss_mib(api_pid)
        memory["store, 10 s after"] = rss_mib(mongo_pid)
        after = measure(probe, victim, min(args.probes, 20), min(args.creates, 5))
    heads = [first[9:12].decode(errors="replace") or "closed" for first in firsts.values()]
    statuses = {status: heads.count(status) for status in set(heads)}
    print(
        f"{len(readers)} slow readers of a {args.lines}-line batch's results from 4 addresses;"
        f" first answers seen: {statuses}"
    )
    print("memory (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
    report(quiet, attacked)
    print(line("other tenant's waited create, after", after["made"]))


def row_dryruns(args: argparse.Namespace) -> None:
    with deployment({}) as stack:
        victim = stack.new_tenant()
        probe = Probe(stack.port)
        quiet = measure(probe, victim, args.probes, args.creates)
        size = args.mib << 20
        per_line = 2000
        count = min(50_000, size // (per_line + 100))
        one = {"model": "m", "instructions": "y" * (size // count - 120)}
        data = b"".join(
            json.dumps({"custom_id": f"k{i}", "body": one}).encode() + b"\n" for i in range(count)
        )
        clients = [stack.new_tenant() for _ in range(args.clients)]
        stop = threading.Event()
        runs: list[tuple[int, float]] = []

        def loop(client: Tenant) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    answer = client.request(
                        "POST",
                        "/v1/batches?mode=apply&dry_run=true",
                        data=data,
                        headers={"Content-Type": "application/x-ndjson"},
                        timeout=300,
                    )
                    status = answer.status_code
                except OSError:
                    status = 0
                runs.append((status, time.perf_counter() - started))
                if status == 429:
                    time.sleep(float(answer.headers.get("Retry-After", "1")))

        threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        try:
            time.sleep(5)
            attacked = measure(probe, victim, args.probes, args.creates)
        finally:
            stop.set()
            for thread in threads:
                thread.join(300)
    done = [seconds for status, seconds in runs if status == 200]
    statuses = {s: [r[0] for r in runs].count(s) for s in {r[0] for r in runs}}
    print(
        f"{args.clients} clients looping {len(data) / (1 << 20):.0f} MiB apply dry runs"
        f" ({count} lines): answers {statuses}, a dry run took p50"
        f" {statistics.median(done) if done else float('nan'):.1f} s"
    )
    report(quiet, attacked)


ROWS: dict[str, Callable[[argparse.Namespace], None]] = {
    "waiters": row_waiters,
    "idle": lambda args: row_idle(args, proxied=False),
    "idle-proxy": lambda args: row_idle(args, proxied=True),
    "trickle": row_trickle,
    "streams": row_streams,
    "dryruns": row_dryruns,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("row", choices=sorted(ROWS), nargs="?", default="waiters")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--idle", type=int, default=700)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--mib", type=int, default=99)
    parser.add_argument("--trickle-seconds", type=float, default=90)
    parser.add_argument("--budget", type=float, default=180, help="seconds per measurement")
    args = parser.parse_args()
    BUDGET[0] = args.budget
    ROWS[args.row](args)


if __name__ == "__main__":
    main()
