"""Bulk: items/s from `POST /v1/batches` to `completed`, over raw insert_many docs/s.

Also the API's peak memory while it takes batches of growing size (it should
stay flat: uploads are read as a stream), and the speed-up over sending the
same items as sequential synchronous creates.

    .venv/bin/python -m bench.bulk [--items 20000] [--naive 2000]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.harness import (
    PeakRss,
    assistant_body,
    deployment,
    process_tree,
    raw_insert_many_rate,
    run_batch,
    wait_batch,
)
from tests.stack import Stack, Tenant


def upload(items: int, offset: int = 0) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"c{offset + i}", "body": assistant_body(offset + i)}).encode()
        + b"\n"
        for i in range(items)
    )


def batch_rate(tenant: Tenant, data: bytes, items: int) -> float:
    elapsed, batch = run_batch(tenant, data)
    counts = batch["request_counts"]
    assert counts["completed"] == items, counts
    return items / elapsed


def api_peak_rss(stack: Stack, tenant: Tenant, items: int) -> tuple[int, str]:
    """Peak RSS (KiB) of the edge's processes while it takes one batch of `items`,
    and the batch's id."""
    with PeakRss(process_tree(stack.processes["api"].pid)) as peak:
        data = upload(items, offset=10_000_000)
        response = tenant.request(
            "POST", "/v1/batches", data=data, headers={"Content-Type": "application/x-ndjson"}
        )
        response.raise_for_status()
    return peak.kib, str(response.json()["id"])


def check_results(tenant: Tenant, batch_id: str, items: int) -> None:
    """The whole batch finished, with every result, in input order."""
    batch = wait_batch(tenant, batch_id)
    assert batch["request_counts"]["completed"] == items, batch
    response = tenant.request("GET", f"/v1/batches/{batch_id}/results", stream=True)
    expected = (f"c{10_000_000 + i}" for i in range(items))
    count = 0
    for line, custom_id in zip(response.iter_lines(), expected, strict=True):
        row = json.loads(line)
        assert row["custom_id"] == custom_id and row["status_code"] == 200, row
        count += 1
    assert count == items


def naive_rate(tenant: Tenant, items: int) -> float:
    started = time.perf_counter()
    for i in range(items):
        response = tenant.create(assistant_body(i), Prefer="wait=60")
        assert response.status_code == 200, response.text
    return items / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=2_000, help="sequential creates to time")
    args = parser.parse_args()
    with deployment() as (stack, tenant):
        data = upload(args.items)
        raw = raw_insert_many_rate(stack, args.items)
        indexed = raw_insert_many_rate(stack, args.items, indexed=True)
        bulk = batch_rate(tenant, data, args.items)
        raw = (raw + raw_insert_many_rate(stack, args.items)) / 2
        indexed = (indexed + raw_insert_many_rate(stack, args.items, indexed=True)) / 2
        print(
            f"raw insert_many (1,000 a call): {raw:,.0f} docs/s plain, "
            f"{indexed:,.0f} docs/s with the assistants' indexes"
        )
        print(f"batch of {args.items:,}: {bulk:,.0f} items/s, POST to completed")
        print(
            f"bulk ratio: {bulk / raw:.2f} of plain insert_many (target >= 0.6), "
            f"{bulk / indexed:.2f} of indexed insert_many"
        )
        small, small_batch = api_peak_rss(stack, tenant, 5_000)
        wait_batch(tenant, small_batch)
        large, big_batch = api_peak_rss(stack, tenant, 50_000)
        print(
            f"edge peak RSS: 5,000 lines {small / 1024:.0f} MiB, "
            f"50,000 lines {large / 1024:.0f} MiB (ratio {large / small:.2f})"
        )
        check_results(tenant, big_batch, 50_000)
        print("50,000-line batch: completed, every result present and in input order")
        if args.naive:
            naive = naive_rate(tenant, args.naive)
            print(f"sequential synchronous creates ({args.naive:,}): {naive:,.0f} items/s")
            print(f"batch speed-up over sequential creates: {bulk / naive:.1f}x")


if __name__ == "__main__":
    main()
