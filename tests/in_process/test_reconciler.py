"""The reconciler: what Redis lost or a dead worker left is found again in MongoDB."""

from __future__ import annotations

import time

from tests.stack import Stack, Tenant, wait_until
from worker.domain.ids import new_id
from worker.domain.units import new_unit
from worker.store.units import insert_unit


def store_unsent_job(stack: Stack, tenant: Tenant, body: str, **fields: object) -> str:
    """A job stored as the edge stores it, whose message never reached Redis."""
    job_id = new_id("job_")
    unit = new_unit(
        unit_id=job_id,
        tenant=tenant.name,
        items=[{"id": job_id, "custom_id": None, "body": body}],
        now=int(time.time()),
        resend_after=0,
    )
    unit.update(fields)
    store = stack.db
    insert_unit(store, unit)
    return job_id


def test_a_job_whose_message_was_lost_still_finishes(stack: Stack, tenant: Tenant) -> None:
    job_id = store_unsent_job(stack, tenant, '{"model": "m", "name": "lost"}')
    job = tenant.wait_job(job_id)
    assert job["status"] == "succeeded"
    assert job["result"]["body"]["name"] == "lost"
    assert job["attempts"] == 1


def test_an_expired_lease_is_taken_back_and_the_job_finishes(stack: Stack, tenant: Tenant) -> None:
    # As a worker that died mid-way leaves it: in progress, under a lease nobody holds.
    job_id = store_unsent_job(
        stack,
        tenant,
        '{"model": "m"}',
        status="in_progress",
        lease="dead",
        attempts=1,
        due_at=time.time() - 1,
    )
    job = tenant.wait_job(job_id)
    assert job["status"] == "succeeded"
    assert job["attempts"] == 2


def test_a_job_that_keeps_killing_workers_fails_with_500(stack: Stack, tenant: Tenant) -> None:
    max_attempts = stack.settings.max_attempts
    job_id = store_unsent_job(
        stack,
        tenant,
        '{"model": "m"}',
        status="in_progress",
        lease="dead",
        attempts=max_attempts,
        due_at=time.time() - 1,
    )
    job = tenant.wait_job(job_id)
    assert job["status"] == "failed"
    assert job["result"]["status_code"] == 500
    assert job["attempts"] == max_attempts + 1
    store = stack.db
    assert store.assistants.count_documents({"job_id": job_id}) == 0


def test_a_half_stored_batch_is_removed(stack: Stack, tenant: Tenant) -> None:
    batch_id = new_id("batch_")
    old = int(time.time()) - 3600
    store = stack.db
    store.batches.insert_one(
        {
            "_id": batch_id,
            "tenant": tenant.name,
            "status": "validating",
            "created_at": old,
            "request_counts": {"total": 0, "completed": 0, "failed": 0, "cancelled": 0},
        }
    )
    unit = new_unit(
        unit_id=f"{batch_id}.000000",
        tenant=tenant.name,
        items=[{"id": new_id("job_"), "custom_id": "0", "body": "{}"}],
        now=old,
        batch_id=batch_id,
    )
    unit["status"] = "staged"
    del unit["due_at"]
    store.jobs.insert_one(unit)

    def removed() -> bool:
        return (
            store.batches.count_documents({"_id": batch_id}) == 0
            and store.jobs.count_documents({"batch_id": batch_id}) == 0
        )

    wait_until(removed, timeout=60)
    assert tenant.request("GET", f"/v1/batches/{batch_id}").status_code == 404
