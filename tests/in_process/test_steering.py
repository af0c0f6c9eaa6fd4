"""Routes users can steer without surprises: no query parameter is silently
ignored, and a single modify or delete has a dry run that changes nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.local import NO_BULK, Local, running_local
from tests.receiver import Hang, Receiver
from tests.stack import Servers, Tenant, wait_until
from worker.domain import events
from worker.store import deliveries
from worker.store.connection import Store

JSONL = {"Content-Type": "application/x-ndjson"}

NO_QUERY = [
    ("GET", "/v1/assistants/asst_x"),
    ("POST", "/v1/assistants/asst_x"),
    ("DELETE", "/v1/assistants/asst_x"),
    ("GET", "/v1/models"),
    ("GET", "/v1/jobs/job_x"),
    ("GET", "/v1/batches/batch_x"),
    ("POST", "/v1/batches/batch_x/cancel"),
    ("GET", "/v1/webhook_endpoint"),
    ("DELETE", "/v1/webhook_endpoint"),
    ("GET", "/v1/webhook_deliveries/d_x"),
]


def made(tenant: Tenant, name: str = "kept") -> dict[str, Any]:
    response = tenant.create({"model": "gpt-4", "name": name}, Prefer="wait=30")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def plan(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    (line,) = [json.loads(text) for text in response.text.splitlines()]
    result: dict[str, Any] = line
    return result


@pytest.mark.parametrize(("method", "path"), NO_QUERY)
def test_a_route_without_query_parameters_refuses_any_given(
    tenant: Tenant, method: str, path: str
) -> None:
    response = tenant.request(method, path, params={"bogus": "1"})
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert (entry["loc"], entry["type"]) == (["query", "bogus"], "extra_forbidden")


def test_an_unknown_parameter_on_delete_deletes_nothing(tenant: Tenant) -> None:
    assistant = made(tenant)
    path = f"/v1/assistants/{assistant['id']}"
    response = tenant.request("DELETE", path, params={"dryrun": "true"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "dryrun"]
    assert tenant.request("GET", path).json() == assistant


def test_an_unknown_parameter_on_modify_changes_nothing(tenant: Tenant) -> None:
    assistant = made(tenant)
    path = f"/v1/assistants/{assistant['id']}"
    response = tenant.request("POST", path, json={"name": "new"}, params={"bogus": "1"})
    assert response.status_code == 422
    assert tenant.request("GET", path).json() == assistant


def test_delete_dry_run_answers_the_plan_line_and_deletes_nothing(tenant: Tenant) -> None:
    assistant = made(tenant)
    path = f"/v1/assistants/{assistant['id']}"
    line = plan(tenant.request("DELETE", path, params={"dry_run": "true"}))
    assert line == {
        "custom_id": None,
        "action": "delete",
        "status_code": 200,
        "body": {"id": assistant["id"], "object": "assistant.deleted", "deleted": True},
    }
    assert tenant.request("GET", path).json() == assistant
    missing = plan(tenant.request("DELETE", "/v1/assistants/asst_none", params={"dry_run": "true"}))
    assert (missing["action"], missing["status_code"]) == ("invalid", 404)
    assert tenant.request("DELETE", path, params={"dry_run": "false"}).status_code == 200
    assert tenant.request("GET", path).status_code == 404


def test_modify_dry_run_answers_the_plan_line_and_changes_nothing(tenant: Tenant) -> None:
    assistant = made(tenant)
    path = f"/v1/assistants/{assistant['id']}"
    line = plan(tenant.request("POST", path, json={"name": "renamed"}, params={"dry_run": "true"}))
    assert (line["action"], line["status_code"]) == ("update", 200)
    assert line["changes"] == {"name": {"from": "kept", "to": "renamed"}}
    assert line["body"] == {**assistant, "name": "renamed"}
    same = plan(tenant.request("POST", path, json={"name": "kept"}, params={"dry_run": "true"}))
    assert same["action"] == "unchanged"
    bad = plan(tenant.request("POST", path, json={"name": 5}, params={"dry_run": "true"}))
    assert (bad["action"], bad["status_code"]) == ("invalid", 422)
    assert bad["body"]["detail"][0]["loc"] == ["body", "name"]
    gone = plan(
        tenant.request("POST", "/v1/assistants/asst_none", json={}, params={"dry_run": "true"})
    )
    assert (gone["action"], gone["status_code"]) == ("invalid", 404)
    assert tenant.request("GET", path).json() == assistant
    # The create's job is the only one: a dry run records none.
    assert len(tenant.request("GET", "/v1/jobs").json()["data"]) == 1


@pytest.fixture(scope="module")
def no_bulk(servers: Servers) -> Iterator[Local]:
    """No worker of the bulk queue: a batch stays in progress until cancelled."""
    with running_local(servers.settings(EXPRESS_BATCH_LINES="0"), NO_BULK) as deployment:
        yield deployment


def submit(tenant: Tenant, count: int) -> dict[str, Any]:
    data = b"".join(json.dumps({"body": {"model": "m"}}).encode() + b"\n" for _ in range(count))
    response = tenant.request("POST", "/v1/batches", data=data, headers=JSONL)
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


def test_a_batch_in_progress_answers_retry_after_and_waits_out_prefer(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    batch = submit(tenant, 3)
    path = f"/v1/batches/{batch['id']}"
    plain = tenant.request("GET", path)
    assert (plain.json()["status"], plain.headers["Retry-After"]) == ("in_progress", "1")
    waited = tenant.request("GET", path, headers={"Prefer": "wait=1"})
    assert waited.json()["status"] == "in_progress"
    assert (waited.headers["Retry-After"], waited.headers["Preference-Applied"]) == ("1", "wait=1")


def test_a_wait_on_a_batch_ends_when_it_stops_being_in_progress(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    batch = submit(tenant, 3)
    path = f"/v1/batches/{batch['id']}"
    answers: list[Any] = []
    waiting = threading.Thread(
        target=lambda: answers.append(tenant.request("GET", path, headers={"Prefer": "wait=60"}))
    )
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the wait is under way (if not, it reads the batch cancelled)
    assert tenant.request("POST", f"{path}/cancel").status_code == 200
    waiting.join(70)
    (answer,) = answers
    assert answer.json()["status"] == "cancelled"
    assert "Retry-After" not in answer.headers
    assert time.monotonic() - started < 45  # woken by the finish, not the 60 s deadline


def test_a_wait_on_a_batch_answers_it_completed(tenant: Tenant) -> None:
    batch = submit(tenant, 5)
    answer = tenant.request("GET", f"/v1/batches/{batch['id']}", headers={"Prefer": "wait=60"})
    assert answer.json()["status"] == "completed"
    assert answer.json()["request_counts"]["completed"] == 5
    assert "Retry-After" not in answer.headers


def submit_lines(tenant: Tenant, lines: list[Any], query: str = "") -> dict[str, Any]:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    response = tenant.request("POST", f"/v1/batches{query}", data=data, headers=JSONL)
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


def finished(tenant: Tenant, batch_id: str) -> dict[str, Any]:
    answer = tenant.request("GET", f"/v1/batches/{batch_id}", headers={"Prefer": "wait=60"})
    batch: dict[str, Any] = answer.json()
    assert batch["status"] in ("completed", "cancelled"), batch
    return batch


def lines_of(tenant: Tenant, batch_id: str, query: str = "") -> list[dict[str, Any]]:
    response = tenant.request("GET", f"/v1/batches/{batch_id}/results{query}")
    assert response.status_code == 200, response.text
    return [json.loads(text) for text in response.text.splitlines()]


def retry(tenant: Tenant, batch_id: str, query: str = "") -> Any:
    return tenant.request("POST", f"/v1/batches/{batch_id}/retry{query}")


MIXED = [
    {"custom_id": "ok-1", "body": {"model": "m", "name": "one"}},
    {"custom_id": "bad", "body": {"name": "no model"}},
    {
        "custom_id": "gone",
        "method": "POST",
        "url": "/v1/assistants/asst_none",
        "body": {"name": "x"},
    },
    {"custom_id": "ok-2", "body": {"model": "m"}},
]


def test_failed_lines_read_back_as_input(tenant: Tenant) -> None:
    batch = submit_lines(tenant, MIXED)
    finished(tenant, batch["id"])
    assert lines_of(tenant, batch["id"], "?status=failed&format=input") == [
        {"custom_id": "bad", "body": {"name": "no model"}},
        {
            "custom_id": "gone",
            "method": "POST",
            "url": "/v1/assistants/asst_none",
            "body": {"name": "x"},
        },
    ]
    everything = lines_of(tenant, batch["id"], "?format=input")
    assert [line["custom_id"] for line in everything] == ["ok-1", "bad", "gone", "ok-2"]
    bad = tenant.request("GET", f"/v1/batches/{batch['id']}/results?format=jsonl")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "format"]


def test_a_retry_holds_the_failed_lines_and_a_retry_of_it_works(tenant: Tenant) -> None:
    parent = submit_lines(tenant, MIXED, "?job_events=false")
    finished(tenant, parent["id"])
    before = lines_of(tenant, parent["id"])
    answer = retry(tenant, parent["id"])
    assert answer.status_code == 202, answer.text
    child = answer.json()
    assert answer.headers["Location"].endswith(f"/v1/batches/{child['id']}")
    assert (child["retry_of"], child["mode"], child["request_counts"]["total"]) == (
        parent["id"],
        "create",
        2,
    )
    finished(tenant, child["id"])
    results = lines_of(tenant, child["id"])
    assert [(r["custom_id"], r["status_code"]) for r in results] == [("bad", 422), ("gone", 404)]
    assert lines_of(tenant, parent["id"]) == before  # the parent's results stay
    nothing = retry(tenant, parent["id"], "?only=cancelled")
    assert nothing.status_code == 409
    assert "no cancelled lines" in nothing.json()["detail"]
    grandchild = retry(tenant, child["id"], "?only=failed")
    assert grandchild.status_code == 202, grandchild.text
    assert grandchild.json()["retry_of"] == child["id"]
    assert finished(tenant, grandchild.json()["id"])["request_counts"]["failed"] == 2


def test_a_batch_that_all_succeeded_has_nothing_to_retry(tenant: Tenant) -> None:
    batch = submit_lines(tenant, [{"body": {"model": "m"}}])
    finished(tenant, batch["id"])
    answer = retry(tenant, batch["id"])
    assert answer.status_code == 409
    assert answer.json()["detail"] == (
        f"Batch {batch['id']} has no failed or cancelled lines left to retry"
    )
    assert retry(tenant, "batch_none").status_code == 404
    assert retry(tenant, batch["id"], "?only=everything").status_code == 422


def test_an_apply_retry_keeps_its_mode(tenant: Tenant) -> None:
    parent = submit_lines(
        tenant,
        [{"custom_id": "k1", "body": {"model": "m"}}, {"custom_id": "k2", "body": {}}],
        "?mode=apply",
    )
    finished(tenant, parent["id"])
    child = retry(tenant, parent["id"]).json()
    assert (child["mode"], child["request_counts"]["total"]) == ("apply", 1)
    (result,) = lines_of(tenant, finished(tenant, child["id"])["id"])
    assert (result["custom_id"], result["status_code"]) == ("k2", 422)


def test_a_running_batch_is_not_retried_and_its_cancelled_lines_are(no_bulk: Local) -> None:
    tenant = no_bulk.new_tenant()
    lines = [{"custom_id": f"c{i}", "body": {"model": "m"}} for i in range(3)]
    parent = submit_lines(tenant, lines)
    running = retry(tenant, parent["id"])
    assert running.status_code == 409
    assert running.json()["detail"] == (
        f"Batch {parent['id']} is still in_progress; retry it once it is completed or cancelled"
    )
    assert tenant.request("POST", f"/v1/batches/{parent['id']}/cancel").status_code == 200
    assert retry(tenant, parent["id"], "?only=failed").status_code == 409
    child = retry(tenant, parent["id"], "?only=cancelled")
    assert child.status_code == 202, child.text
    assert child.json()["request_counts"]["total"] == 3
    assert [line["custom_id"] for line in lines_of(tenant, parent["id"], "?format=input")] == [
        "c0",
        "c1",
        "c2",
    ]


def test_batch_completed_comes_after_each_job_event_had_its_first_attempt(
    tenant: Tenant,
) -> None:
    """Through the real workers: with job events answered slowly (a second each),
    the held batch event is still sent, after all of them. (The hold itself is
    checked deterministically by the claim test below; here the send order
    alone often keeps the batch event last.)"""
    lines = [{"custom_id": f"c{i}", "body": {"model": "m"} if i % 2 else {}} for i in range(8)]
    with Receiver() as hook:
        hook.then(*[Hang(seconds=1.0)] * 8)
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        response = tenant.request(
            "POST",
            "/v1/batches?job_events=true",
            data=data,
            headers={**JSONL, "Callback-URL": hook.url()},
        )
        assert response.status_code == 202, response.text
        wait_until(lambda: len({r.body for r in hook.requests}) >= 9, timeout=90)
        events = [json.loads(r.body)["type"] for r in hook.requests]
    assert sorted(set(events)) == ["batch.completed", "job.failed", "job.succeeded"]
    first_batch_event = events.index("batch.completed")
    assert first_batch_event == 8, events  # every job event arrived before it


def test_a_batch_event_is_not_claimed_while_a_job_event_awaits_its_first_attempt(
    db: Store, tenant: Tenant
) -> None:
    now = time.time()
    owner = tenant.name
    made = {
        name: events.new_delivery(
            msg_id=f"msg_{name}_{now}",
            tenant=owner,
            event_type=event_type,
            url="http://127.0.0.1:9/hook",
            body="{}",
            now=now,
            expire_at=datetime(2100, 1, 1),
        )
        for name, event_type in (("job", "job.failed"), ("batch", "batch.completed"))
    }
    made["job"]["batch_id"] = "batch_gated"
    made["job"]["next_attempt_at"] = now + 3600  # its first attempt is not due yet
    made["batch"]["after_jobs_of"] = "batch_gated"
    deliveries.insert(db, list(made.values()))
    batch_id = made["batch"]["_id"]
    assert deliveries.claim(db, batch_id, now, 30) is None
    deferred = db.deliveries.find_one({"_id": batch_id})
    assert deferred is not None and "lease" not in deferred
    assert deferred["next_attempt_at"] > now
    later = deferred["next_attempt_at"]
    db.deliveries.update_one({"_id": made["job"]["_id"]}, {"$push": {"attempts": {"n": 1}}})
    claimed = deliveries.claim(db, batch_id, later, 30)
    assert claimed is not None and claimed[0]["_id"] == batch_id
