"""Apply batches against plain create batches, measured in one run.

- 20,000 new lines applied (`?mode=apply`) vs a create batch of the same
  bodies: the apply rate over the create rate (target: within 10 %), taken as
  create, apply, apply, create (the second pair as another tenant) so that the
  growing collections weigh on both alike;
- the same 20,000 lines applied again, all unchanged: how many times faster
  than the first apply (target: at least 3x), and that no assistant was written;
- dry runs of 5,000 and 50,000 lines (20,000 of them existing): the answer's
  time, and the edge's peak memory (flat in the line count);
- a 10-line dry run of a new tenant on the empty store, and again once other
  tenants keyed 40,000 assistants: what others' assistants cost it (target:
  within 3x); and one naming 10 keys of the tenant that keyed 20,000: what its
  own other assistants cost it.

    PYTHONPATH=. .venv/bin/python -m bench.apply        # --items 20000 --dry 50000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from bench.harness import (
    PeakRss,
    assistant_body,
    deployment,
    env_cpu_note,
    process_tree,
    run_batch,
)
from tests.stack import Stack, Tenant

NDJSON = {"Content-Type": "application/x-ndjson"}


def lines(items: int, prefix: str, offset: int = 0) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"{prefix}{i}", "body": assistant_body(offset + i)}).encode()
        + b"\n"
        for i in range(items)
    )


def assistants_digest(stack: Stack) -> tuple[int, str]:
    """How many assistants there are, and a hash of every one of them as stored."""
    store = stack.store()
    try:
        digest = hashlib.sha256()
        count = 0
        for doc in store.assistants.find({}, sort=[("_id", 1)]):
            digest.update(json.dumps(doc, default=str, sort_keys=True).encode())
            count += 1
        return count, digest.hexdigest()
    finally:
        store.close()


def dry_run(stack: Stack, tenant: Tenant, data: bytes) -> tuple[float, int, int]:
    """Seconds to the whole plan, its line count, and the edge's peak RSS (KiB)."""
    with PeakRss(process_tree(stack.processes["api"].pid)) as peak:
        started = time.perf_counter()
        response = tenant.request(
            "POST", "/v1/batches?mode=apply&dry_run=true", data=data, headers=NDJSON, stream=True
        )
        response.raise_for_status()
        count = sum(1 for line in response.iter_lines() if line)
        elapsed = time.perf_counter() - started
    return elapsed, count, peak.kib


def tiny_dry_run(stack: Stack, name: str, tenant: Tenant | None = None) -> float:
    """Median seconds of a 10-line dry run: of a new tenant with no assistants,
    or of `tenant` naming 10 of its keys."""
    tenant = tenant or stack.new_tenant(name)
    data = lines(10, "k" if name == "own" else "t")
    times = sorted(dry_run(stack, tenant, data)[0] for _ in range(9))
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dry", type=int, default=50_000)
    args = parser.parse_args()
    n = args.items
    with deployment() as (stack, tenant):
        tiny_empty = tiny_dry_run(stack, "bench-empty")
        create_s, created = run_batch(tenant, lines(n, "c"), "")
        assert created["request_counts"]["completed"] == n, created
        apply_s, applied = run_batch(tenant, lines(n, "k"), "mode=apply")
        assert applied["request_counts"]["created"] == n, applied
        # The second pair as another tenant: the first keeps 20,000 keyed and
        # 20,000 unkeyed assistants for the re-apply and the dry runs.
        other = stack.new_tenant("bench-2")
        apply2_s, applied = run_batch(other, lines(n, "k", offset=n), "mode=apply")
        assert applied["request_counts"]["created"] == n, applied
        create2_s, created = run_batch(other, lines(n, "c", offset=n), "")
        assert created["request_counts"]["completed"] == n, created
        before = assistants_digest(stack)
        again_s, again = run_batch(tenant, lines(n, "k"), "mode=apply")
        assert again["request_counts"]["unchanged"] == n, again
        after = assistants_digest(stack)
        small_s, small_count, small_rss = dry_run(stack, tenant, lines(args.dry // 10, "k"))
        big_s, big_count, big_rss = dry_run(stack, tenant, lines(args.dry, "k"))
        assert (small_count, big_count) == (args.dry // 10, args.dry)
        tiny_beside = tiny_dry_run(stack, "bench-beside")
        tiny_own = tiny_dry_run(stack, "own", tenant)

    print(f"apply bench, {env_cpu_note()}, {n:,} lines of ~1 KB")
    print(f"  create batch:            {create_s:6.1f} s, then {create2_s:.1f} s")
    print(
        f"  apply, all new:          {apply_s:6.1f} s, then {apply2_s:.1f} s"
        f"  -> {(create_s + create2_s) / (apply_s + apply2_s):.2f} of the create batches' rate"
    )
    print(
        f"  apply again, unchanged:  {again_s:6.1f} s  {n / again_s:7,.0f} lines/s"
        f"  -> {(apply_s + apply2_s) / 2 / again_s:.1f}x faster than a first apply"
    )
    print(
        f"  assistants written by the re-apply: "
        f"{'none' if before == after else 'SOME'} ({after[0]:,} assistants, same hash)"
    )
    print(
        f"  dry run {args.dry // 10:,} lines: {small_s:5.1f} s, edge peak RSS "
        f"{small_rss / 1024:.0f} MiB"
    )
    print(
        f"  dry run {args.dry:,} lines: {big_s:5.1f} s, edge peak RSS {big_rss / 1024:.0f} MiB"
        f"  -> memory {big_rss / small_rss:.2f}x for 10x the lines"
    )
    print(
        f"  10-line dry run of a new tenant: {tiny_empty * 1000:.0f} ms on the empty store, "
        f"{tiny_beside * 1000:.0f} ms beside {2 * n:,} keyed assistants of others"
        f"  -> {tiny_beside / tiny_empty:.1f}x"
    )
    print(
        f"  10-line dry run of the tenant that keyed {n:,} (10 of its keys): "
        f"{tiny_own * 1000:.0f} ms  -> {tiny_own / tiny_empty:.1f}x the empty store's"
    )


if __name__ == "__main__":
    main()
