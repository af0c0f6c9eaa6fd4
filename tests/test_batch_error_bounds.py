"""A batch's 422 stays small whatever its lines hold: each line error echoes at
most 1 KiB of what it refuses, marked `ctx.input_truncated`, and the edge's
memory comes back after a 50 MiB line."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from api.truncation import ECHO_BYTES
from tests.stack import Stack, Tenant

JSONL = {"Content-Type": "application/x-ndjson"}
MIB = 1024 * 1024
# 100 entries of at most about 1 KiB of input and 1 KiB of loc each, and their words.
BOUND = 100 * (2 * ECHO_BYTES + 512)


def post(tenant: Tenant, data: bytes) -> Any:
    return tenant.request("POST", "/v1/batches", data=data, headers=JSONL, timeout=300)


def size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def edge_rss_mib(stack: Stack) -> float:
    """Resident memory of the edge's gunicorn processes, the master's included."""
    master = stack.processes["api"].pid
    pids = [master]
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        pids += [int(pid) for pid in children]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
    return total / 1024


def test_a_50_mib_line_is_echoed_in_1_kib(stack: Stack, tenant: Tenant) -> None:
    huge = "x" * (50 * MIB)
    lines = [
        json.dumps(huge),  # not an object: dict_type, echoing the line
        json.dumps({"custom_id": "a", "note": huge[: 10 * MIB], "body": {"model": "m"}}),
        json.dumps({"custom_id": "b", "payload": {"model": "m", "name": huge[:MIB]}}),
        json.dumps({"custom_id": "c", "k" * 5000: 1, "body": {}}),
        json.dumps({"custom_id": "ok", "body": {"model": "m"}}),
    ]
    before = edge_rss_mib(stack)
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], edge_rss_mib(stack))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = post(tenant, "\n".join(lines).encode())
        time.sleep(1)
    finally:
        done.set()
        watcher.join()
    after = edge_rss_mib(stack)
    print(f"edge RSS: {before:.0f} MiB before, {peak[0]:.0f} peak, {after:.0f} after")

    assert response.status_code == 422, response.text[:1000]
    assert len(response.content) < 8 * ECHO_BYTES
    not_object, extra, payload, missing, long_key = response.json()["detail"]
    assert (not_object["type"], not_object["loc"]) == ("dict_type", ["body", 0])
    assert not_object["input"] == "x" * (ECHO_BYTES - 2)  # 1 KiB of JSON, quotes included
    assert not_object["ctx"] == {"input_truncated": True}
    assert (extra["type"], extra["loc"]) == ("extra_forbidden", ["body", 1, "note"])
    assert size(extra["input"]) <= ECHO_BYTES and extra["ctx"] == {"input_truncated": True}
    assert (payload["type"], payload["loc"]) == ("extra_forbidden", ["body", 2, "payload"])
    assert payload["input"]["model"] == "m" and size(payload["input"]) <= ECHO_BYTES
    assert (missing["type"], missing["loc"]) == ("missing", ["body", 2, "body"])
    # An object keeps the members that fit, the one cut short last.
    assert missing["input"]["custom_id"] == "b"
    assert missing["input"]["payload"]["model"] == "m"
    assert missing["input"]["payload"]["name"].startswith("xxx")
    assert size(missing["input"]) <= ECHO_BYTES
    assert long_key["type"] == "extra_forbidden"
    assert long_key["loc"][:2] == ["body", 3] and size(long_key["loc"][2]) <= ECHO_BYTES
    assert long_key["input"] == 1
    assert long_key["ctx"] == {"loc_truncated": True}
    # Once answered, the edge gives the memory back (reading the upload line by
    # line in 1 KiB pieces used to leave 70 MiB behind per long line).
    assert after - before < 40, (before, peak[0], after)


def test_a_422_for_a_whole_batch_stays_under_a_fixed_bound(tenant: Tenant) -> None:
    big = "é" * (100 * 1024)
    lines = [
        json.dumps({"custom_id": str(i), "x" * 2000: big, "body": big}, ensure_ascii=False)
        for i in range(120)
    ]
    response = post(tenant, "\n".join(lines).encode())
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 100
    assert len(response.content) < BOUND
    assert all(size(entry["input"]) <= ECHO_BYTES for entry in detail)


def test_small_inputs_are_echoed_whole(tenant: Tenant) -> None:
    line = {"custom_id": "a", "extra": {"k": "v" * 900}, "body": {"model": "m"}}
    response = post(tenant, json.dumps(line).encode())
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert entry["input"] == line["extra"]
    assert "ctx" not in entry
