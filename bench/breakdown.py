"""Where the time of one waited create goes, stage by stage.

Sends `Prefer: wait` creates (one client by default, each kept alive), then joins
the edge's access line and the worker's "job finished" line of each request by
its request id and prints the median and p90 of every stage:

    PYTHONPATH=. .venv/bin/python -m bench.breakdown [--requests 200]

Edge stages: rate_limit, auth, parse (body read and JSON check), idempotency,
insert (the journaled unit write), send (the task message), read and wait
(the waiter's reads of the job and its sleep until the finish is published).
Worker stages: pickup (acceptance to the worker's claim: the edge's commit,
the broker, the worker's pickup and any grouping; "pickup after commit" is what
follows the edge's commit), claim, validate, insert, tenants, record, publish,
tell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import assistant_body, deployment, percentile
from bench.loadgen import Connection, post

EDGE = ("rate_limit", "auth", "parse", "idempotency", "commit", "wait", "read")
WORKER = ("pickup", "claim", "validate", "insert", "tenants", "record", "publish", "tell")


def log_lines(folder: Path) -> list[dict[str, Any]]:
    lines = []
    for path in folder.glob("*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    with deployment(LOG_LEVEL="INFO") as (stack, tenant):
        totals: dict[str, float] = {}
        ids: list[str] = []

        def client(share: int) -> None:
            connection = Connection("127.0.0.1", stack.port)
            for i in range(share):
                request_id = f"bench-{uuid.uuid4().hex}"
                body = json.dumps(assistant_body(i)).encode()
                headers = {
                    "Authorization": f"Bearer {tenant.api_key}",
                    "Prefer": "wait=10",
                    "X-Request-ID": request_id,
                }
                started = time.perf_counter()
                reply = connection.exchange(post("/v1/assistants", "127.0.0.1", body, headers))
                assert reply.status == 200, reply.body[:300]
                totals[request_id] = (time.perf_counter() - started) * 1000
                ids.append(request_id)

        threads = [
            threading.Thread(target=client, args=(args.requests // args.clients,))
            for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1)  # let the last lines reach the files
        edge: dict[str, dict[str, float]] = {}
        worker: dict[str, dict[str, float]] = {}
        for line in log_lines(stack.logs):
            if "stages_ms" not in line:
                continue
            # A unit of creates accepted together logs its requests' ids at once.
            for rid in line.get("request_ids") or [line.get("request_id")]:
                if rid not in totals:
                    continue
                if line.get("logger") == "api.access":
                    edge[rid] = line["stages_ms"]
                elif line.get("message") == "job finished":
                    worker[rid] = line["stages_ms"]
        measured = [rid for rid in ids if rid in edge and rid in worker]
        print(f"{len(measured)} of {len(ids)} waited creates, {args.clients} clients, kept alive")
        print(f"{'stage':<22}{'p50 ms':>9}{'p90 ms':>9}")
        for side, names, table in (("edge", EDGE, edge), ("worker", WORKER, worker)):
            for name in names:
                values = [table[rid].get(name, 0.0) for rid in measured]
                print(
                    f"{side + ' ' + name:<22}{statistics.median(values):>9.2f}"
                    f"{percentile(values, 90):>9.2f}"
                )
        # The worker's pickup counts from the job's acceptance, when the edge's
        # commit (its journaled insert, then its send) began: what follows the
        # commit is the broker's and the worker's own share.
        after = [worker[rid].get("pickup", 0.0) - edge[rid].get("commit", 0.0) for rid in measured]
        print(
            f"{'pickup after commit':<22}{statistics.median(after):>9.2f}"
            f"{percentile(after, 90):>9.2f}"
        )
        whole = [totals[rid] for rid in measured]
        print(
            f"{'client, whole request':<22}{statistics.median(whole):>9.2f}"
            f"{percentile(whole, 90):>9.2f}"
        )


if __name__ == "__main__":
    main()
