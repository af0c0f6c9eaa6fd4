"""Fair shares between tenants: what one tenant's backlog costs another.

Run with `python -m bench.tenants`. In one deployment laid out as `dev` lays
it out, a small batch (20 lines) of one tenant is timed alone, then right
after another tenant submitted a big one (20,000 lines): the ratio is what
the big batch costs the small one. Before batches were served across tenants
in turn, the small batch waited for the whole big batch (first in, first out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.harness import deployment, wait_batch
from tests.stack import Tenant
from worker.services import turns

JSONL = {"Content-Type": "application/x-ndjson"}


def upload(lines: int, tag: str) -> bytes:
    return b"".join(
        json.dumps(
            {"custom_id": f"{tag}{i}", "body": {"model": "gpt-4", "name": f"{tag}{i}"}}
        ).encode()
        + b"\n"
        for i in range(lines)
    )


def submit(tenant: Tenant, data: bytes) -> str:
    response = tenant.request("POST", "/v1/batches", data=data, headers=JSONL)
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    return batch_id


ACCEPTED: list[float] = []


def small_batch_seconds(tenant: Tenant, data: bytes) -> float:
    """From the upload to `completed`; the time to the 202 goes to ACCEPTED."""
    started = time.perf_counter()
    batch_id = submit(tenant, data)
    ACCEPTED.append(time.perf_counter() - started)
    wait_batch(tenant, batch_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=20_000, help="lines of the big batch")
    parser.add_argument("--small", type=int, default=20, help="lines of the small batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--chunk-sizes", default="500", help="CHUNK_SIZE of each deployment, comma-separated"
    )
    parser.add_argument(
        "--bulk-processes",
        default="",
        help="the bulk worker's processes in each deployment, comma-separated (dev's if empty)",
    )
    args = parser.parse_args()
    small_data, big_data = upload(args.small, "s"), upload(args.big, "b")
    processes = [int(n) for n in args.bulk_processes.split(",") if n] or [None]
    for chunk_size in args.chunk_sizes.split(","):
        for bulk_processes in processes:
            with deployment(bulk_processes, CHUNK_SIZE=chunk_size) as (stack, small):
                print(f"CHUNK_SIZE={chunk_size}, bulk processes: {bulk_processes or 'as dev'}")
                measure(args, stack.new_tenant("big"), small, big_data, small_data)


def measure(
    args: argparse.Namespace, big: Tenant, small: Tenant, big_data: bytes, small_data: bytes
) -> None:
    alone = []
    for _ in range(5):
        # Spaced as the small batches beside are: each takes the lane
        # a tenant may use once a second (`turns.EXPRESS_EVERY_MS`).
        time.sleep(turns.EXPRESS_EVERY_MS / 1000)
        alone.append(small_batch_seconds(small, small_data))
    accepted_alone = statistics.median(ACCEPTED)
    ACCEPTED.clear()
    beside: list[float] = []
    done_meanwhile: list[int] = []
    big_seconds: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        big_id = submit(big, big_data)
        beside.append(small_batch_seconds(small, small_data))
        counts = big.request("GET", f"/v1/batches/{big_id}").json()["request_counts"]
        done_meanwhile.append(counts["completed"] + counts["failed"])
        wait_batch(big, big_id)
        big_seconds.append(time.perf_counter() - started)
    p50_alone, p50_beside = statistics.median(alone), statistics.median(beside)
    print(f"  small batch ({args.small} lines) alone: p50 {p50_alone:.3f} s")
    print(
        f"  right after a {args.big:,}-line batch of another tenant: "
        f"p50 {p50_beside:.3f} s (max {max(beside):.3f} s); the big batch had "
        f"{statistics.median(done_meanwhile):,.0f} lines done by then"
    )
    print(
        f"  of which to the 202: p50 {accepted_alone:.3f} s alone, "
        f"{statistics.median(ACCEPTED):.3f} s beside"
    )
    ACCEPTED.clear()
    print(f"  ratio beside / alone: {p50_beside / p50_alone:.1f}x")
    rate = args.big / statistics.median(big_seconds)
    print(f"  the big batch: {rate:,.0f} lines/s from upload to completed")


if __name__ == "__main__":
    main()
