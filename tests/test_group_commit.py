"""Single creates that one edge process accepts together share one stored unit
(group commit): each is still its own job, with its own result, waiter,
webhook, request id and place in the lists, and keyed requests keep units of
their own."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.in_process.test_webhooks import verify
from tests.receiver import Receiver
from tests.stack import Stack, Tenant, wait_until

BURST = 24


def send_burst(tenant: Tenant, hook: str | None, round_no: int) -> list[dict[str, Any]]:
    """BURST creates released at once from as many threads: every fourth invalid,
    every other one waited, every sixth with an Idempotency-Key."""
    barrier = threading.Barrier(BURST)

    def one(i: int) -> dict[str, Any]:
        name = f"r{round_no}-n{i}"
        valid = i % 4 != 3
        body: dict[str, Any] = {"model": "gpt-4", "name": name if valid else 5}
        headers = {"X-Request-ID": f"trace-{uuid.uuid4().hex}"}
        if hook is not None:
            headers["Callback-URL"] = hook
        if i % 2 == 0:
            headers["Prefer"] = "wait=30"
        if i % 6 == 1:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        session = requests.Session()
        request = {"Authorization": f"Bearer {tenant.api_key}", **headers}
        barrier.wait()
        response = session.post(
            tenant.stack.url + "/v1/assistants", json=body, headers=request, timeout=90
        )
        job_id = response.headers["Location"].rsplit("/", 1)[1]
        return {
            "name": name,
            "valid": valid,
            "headers": headers,
            "status": response.status_code,
            "body": response.json(),
            "job_id": job_id,
            "seconds": response.elapsed.total_seconds(),
        }

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(one, range(BURST)))


def units_of(stack: Stack, tenant: Tenant) -> list[dict[str, Any]]:
    store = stack.db
    return list(store.jobs.find({"tenant": tenant.name}))


def bursts_until_shared(
    stack: Stack, tenant: Tenant, hook: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Groups form by concurrency alone, so send bursts until some requests were
    stored together; returns every request sent and the shared units."""
    sent: list[dict[str, Any]] = []
    for round_no in range(6):
        sent += send_burst(tenant, hook, round_no)
        shared = [u for u in units_of(stack, tenant) if len(u["items"]) > 1]
        if shared:
            return sent, shared
    raise AssertionError("no two creates of a burst were stored together")


def all_jobs(tenant: Tenant) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"after": after} if after else {})}
        page = tenant.request("GET", "/v1/jobs", params=params).json()
        jobs += page["data"]
        if not page["has_more"]:
            return jobs
        after = page["last_id"]


def test_creates_accepted_together_share_units_and_each_stays_its_own_job(
    stack: Stack, tenant: Tenant
) -> None:
    with Receiver() as hook:
        sent, _ = bursts_until_shared(stack, tenant, hook.url())
        events = hook.wait_for(len(sent))

    by_job = {request["job_id"]: request for request in sent}
    assert len(by_job) == len(sent)
    for request in sent:
        job = tenant.wait_job(request["job_id"])
        answered = request["body"]
        if "Prefer" in request["headers"]:
            # The waiter was told its own job's result, whatever unit held it:
            # answered when its job finished, not when its 30 s wait ran out.
            assert request["seconds"] < 20, request
            if request["valid"]:
                assert request["status"] == 200, answered
                assert answered["name"] == request["name"]
                assert job["result"]["body"] == answered
            else:
                assert request["status"] == 422, answered
                assert answered["detail"][0]["loc"] == ["body", "name"]
        else:
            assert request["status"] == 202, answered
            # What the 202 showed is what the job shows.
            assert answered["id"] == job["id"]
            assert answered["created_at"] == job["created_at"]
        assert job["id"] == request["job_id"]
        assert job["callback_url"] == request["headers"]["Callback-URL"]
        if request["valid"]:
            assert job["status"] == "succeeded", job
            assert job["result"]["body"]["name"] == request["name"]
        else:
            assert job["status"] == "failed", job
            assert job["result"]["status_code"] == 422

    # Each job listed once; each valid request made exactly one assistant.
    listed = [job["id"] for job in all_jobs(tenant)]
    assert sorted(listed) == sorted(by_job)
    store = stack.db
    names = [doc["name"] for doc in store.assistants.find({"tenant": tenant.name})]
    assert sorted(names) == sorted(r["name"] for r in sent if r["valid"])

    # One webhook per job, carrying that job.
    assert len(events) == len(sent)
    told = {}
    for event in events:
        data = verify(tenant.webhook_secret, event)["data"]
        told[data["id"]] = data
    assert sorted(told) == sorted(by_job)
    for job_id, data in told.items():
        assert data == tenant.request("GET", f"/v1/jobs/{job_id}").json()

    units = units_of(stack, tenant)
    for unit in units:
        keyed = [by_job[item["id"]] for item in unit["items"]]
        if any("Idempotency-Key" in request["headers"] for request in keyed):
            # A keyed request's unit is its own: its _id is its job id.
            assert [item["id"] for item in unit["items"]] == [unit["_id"]]
        if len(unit["items"]) > 1:
            # A shared unit is named by its first job and keeps each request id.
            assert unit["_id"] == unit["items"][0]["id"]
            assert [item["request_id"] for item in unit["items"]] == [
                by_job[item["id"]]["headers"]["X-Request-ID"] for item in unit["items"]
            ]
    assert sum(len(unit["items"]) for unit in units) == len(sent)


def test_the_worker_logs_each_job_of_a_shared_unit_with_its_request_id(
    stack: Stack, tenant: Tenant
) -> None:
    sent, shared = bursts_until_shared(stack, tenant, None)
    unit = shared[0]
    job_ids = [item["id"] for item in unit["items"]]
    for job_id in job_ids:
        tenant.wait_job(job_id)
    by_job = {request["job_id"]: request for request in sent}

    def finished_line() -> dict[str, Any] | None:
        text = (stack.logs / f"{stack.name}-worker.log").read_text(encoding="utf-8")
        for line in text.splitlines():
            if unit["_id"] in line and '"job finished"' in line:
                entry: dict[str, Any] = json.loads(line)
                return entry
        return None

    entry = wait_until(finished_line)
    assert entry["job_ids"] == job_ids
    assert entry["request_ids"] == [by_job[j]["headers"]["X-Request-ID"] for j in job_ids]
    assert entry["jobs"] == len(job_ids)
