"""`GET /v1/jobs?status=`: exact per job, read through an index on the units
that hold jobs of that status, so a page costs what it shows.

The deployment here has no bulk worker: single creates finish, batch chunks
stay queued until cancelled.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.local import NO_BULK, Local, running_local
from tests.stack import Servers, Tenant, wait_until

JSONL = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def no_bulk(servers: Servers) -> Iterator[Local]:
    """Chunks of 3, and no worker of the bulk queue: a batch's chunks stay queued."""
    settings = servers.settings(CHUNK_SIZE="3", EXPRESS_BATCH_LINES="0")
    with running_local(settings, NO_BULK) as deployment:
        yield deployment


def jobs(tenant: Tenant, **params: Any) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def every(tenant: Tenant, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every job of a list, page by page."""
    found: list[dict[str, Any]] = []
    while True:
        page = jobs(tenant, limit=limit, **params)
        found += page["data"]
        if not page["has_more"]:
            return found
        params["after"] = page["last_id"]


def batch(tenant: Tenant, bodies: list[Any]) -> dict[str, Any]:
    data = b"".join(json.dumps({"body": body}).encode() + b"\n" for body in bodies)
    response = tenant.request("POST", "/v1/batches", data=data, headers=JSONL)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def test_status_filter_is_exact_per_job_and_pages(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    good = [tenant.create({"model": "m"}, Prefer="wait=30").headers["Location"] for _ in range(3)]
    bad = [tenant.create({"name": 5}, Prefer="wait=30").headers["Location"] for _ in range(2)]
    # Chunks of 3: one holds queued jobs of the batch, the next one too.
    queued = batch(tenant, [{"model": "m"}, {"name": 5}, {"model": "m"}, {"model": "m"}])
    succeeded = {path.rsplit("/", 1)[1] for path in good}
    failed = {path.rsplit("/", 1)[1] for path in bad}

    everything = every(tenant, 2)
    assert len(everything) == 9
    for status, expected in (("succeeded", succeeded), ("failed", failed)):
        for limit in (1, 2, 100):
            listed = every(tenant, limit, status=status)
            assert [job["id"] for job in listed] == [
                job["id"] for job in everything if job["id"] in expected
            ]
            assert {job["status"] for job in listed} == {status}
    waiting = every(tenant, 1, status="queued")
    assert [job["custom_id"] for job in waiting] == ["0", "1", "2", "3"]
    assert all(job["batch_id"] == queued["id"] for job in waiting)
    by_batch = every(tenant, 3, status="queued", batch_id=queued["id"])
    assert by_batch == waiting
    assert every(tenant, 5, status="in_progress") == []
    assert every(tenant, 5, status="cancelled") == []

    cancelled = tenant.request("POST", f"/v1/batches/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert every(tenant, 5, status="queued") == []
    gone = every(tenant, 1, status="cancelled", batch_id=queued["id"])
    assert [job["custom_id"] for job in gone] == ["0", "1", "2", "3"]


def test_a_cursor_whose_job_changed_status_still_pages(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    queued = batch(tenant, [{"model": "m"}] * 6)
    first = jobs(tenant, status="queued", limit=2)
    assert [job["custom_id"] for job in first["data"]] == ["0", "1"]
    tenant.request("POST", f"/v1/batches/{queued['id']}/cancel")
    # The cursor's job is cancelled now; the list goes on after it all the same.
    rest = every(tenant, 2, status="cancelled", after=first["last_id"])
    assert [job["custom_id"] for job in rest] == ["2", "3", "4", "5"]


def test_a_status_page_reads_only_units_holding_that_status(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    for _ in range(30):
        tenant.create({"model": "m"})
    last = tenant.create({"name": 5}, Prefer="wait=30").json()
    store = no_bulk.db
    wait_until(lambda: store.jobs.count_documents({"tenant": tenant.name, "status": "done"}) == 31)
    query = {"tenant": tenant.name, "job_statuses": "failed"}
    plan = store.jobs.find(query).sort([("created_at", 1), ("_id", 1)]).limit(2).explain()
    assert "tenant_1_job_statuses_1_created_at_1__id_1" in json.dumps(plan, default=str)
    stats = plan.get("executionStats", {})
    if "totalDocsExamined" in stats:
        assert stats["totalDocsExamined"] <= 2
    (job,) = jobs(tenant, status="failed")["data"]
    assert job["status"] == "failed"
    assert job["result"]["status_code"] == 422
    assert last["detail"][0]["loc"] == ["body", "model"]


def test_chunks_of_a_batch_still_streaming_in_are_not_listed(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    release = threading.Event()

    line = json.dumps({"body": {"model": "m", "instructions": "x" * 200_000}}).encode() + b"\n"

    def upload() -> Iterator[bytes]:
        # Over 1 MiB, since the edge reads an upload in blocks of 1 MiB: chunks
        # of 3 are staged while the upload waits.
        yield line * 15
        release.wait(30)
        yield line

    answer: list[Any] = []
    sender = threading.Thread(
        target=lambda: answer.append(
            tenant.request("POST", "/v1/batches", data=upload(), headers=JSONL)
        )
    )
    sender.start()
    store = no_bulk.db
    try:
        wait_until(
            lambda: store.jobs.count_documents({"tenant": tenant.name, "status": "staged"}) >= 2
        )
        listed = jobs(tenant)
        queued = jobs(tenant, status="queued")
    finally:
        release.set()
        sender.join()
    assert listed["data"] == [] and queued["data"] == []
    assert answer[0].status_code == 202, answer[0].text
    assert len(every(tenant, 100, status="queued")) == 16
