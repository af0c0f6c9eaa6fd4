"""`POST /v1/assistants/{assistant_id}`: modify, as OpenAI's API and SDK do it,
accepted as a job like a create; and batch lines that modify or delete."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from standardwebhooks import Webhook

from tests.in_process.test_batches import finished_batch, jsonl, results, submit
from tests.local import Local
from tests.receiver import Receiver
from tests.stack import Servers, Stack, Tenant

FULL = {
    "model": "gpt-4",
    "name": "Helper",
    "description": "helps",
    "instructions": "be brief",
    "tools": [{"type": "retrieval"}],
    "file_ids": ["file-1"],
    "metadata": {"team": "sales", "tier": "1"},
}


def make(tenant: Tenant, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = tenant.create(body or FULL, Prefer="wait=30")
    assert response.status_code == 200, response.text
    assistant: dict[str, Any] = response.json()
    return assistant


def modify(tenant: Tenant, assistant_id: str, body: Any, **headers: str) -> Any:
    return tenant.request("POST", f"/v1/assistants/{assistant_id}", json=body, headers=headers)


def read(tenant: Tenant, assistant_id: str) -> dict[str, Any]:
    response = tenant.request("GET", f"/v1/assistants/{assistant_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_modify_is_accepted_as_a_job_and_replaces_the_fields_sent(tenant: Tenant) -> None:
    before = make(tenant)
    response = modify(tenant, before["id"], {"name": "Renamed", "metadata": {"team": "ops"}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "assistant.job" and job["status"] == "queued"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Retry-After"] == "1"

    finished = tenant.wait_job(job["id"])
    assert finished["status"] == "succeeded"
    after = finished["result"]["body"]
    # metadata is replaced whole, as OpenAI does; fields not sent stay.
    assert after == {**before, "name": "Renamed", "metadata": {"team": "ops"}}
    assert read(tenant, before["id"]) == after


def test_prefer_wait_answers_200_with_the_updated_object(tenant: Tenant) -> None:
    before = make(tenant)
    change = {
        "model": "gpt-4o",
        "description": None,
        "instructions": "x" * 32768,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}],
        "file_ids": [],
        "metadata": None,
    }
    response = modify(tenant, before["id"], change, Prefer="wait=30")
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Location"].startswith("/v1/jobs/job_")
    expected = {**before, **change, "metadata": {}}
    assert response.json() == expected
    assert read(tenant, before["id"]) == expected
    # An empty body changes nothing and answers the assistant as it is.
    same = modify(tenant, before["id"], {}, Prefer="wait=30")
    assert same.status_code == 200 and same.json() == expected


def test_the_stored_document_keeps_the_origins_shape_after_a_modify(
    stack: Stack, tenant: Tenant
) -> None:
    before = make(tenant)
    metadata = {"$where": "1", "a.b": "2", "": "3"}
    response = modify(tenant, before["id"], {"metadata": metadata}, Prefer="wait=30")
    assert response.status_code == 200, response.text
    store = stack.db
    doc = store.assistants.find_one({"id": before["id"]})
    assert doc is not None
    assert doc["metadata"] == metadata and doc["tools"] == FULL["tools"]
    nul = {"k\u0000": "v"}
    response = modify(tenant, before["id"], {"metadata": nul}, Prefer="wait=30")
    assert response.status_code == 200 and response.json()["metadata"] == nul
    assert read(tenant, before["id"])["metadata"] == nul


def test_an_invalid_modify_is_422_and_changes_nothing(tenant: Tenant) -> None:
    before = make(tenant)
    response = modify(
        tenant, before["id"], {"model": None, "name": 5, "temperature": 1}, Prefer="wait=30"
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "string_type",
                "loc": ["body", "model"],
                "msg": "Input should be a valid string",
                "input": None,
            },
            {
                "type": "string_type",
                "loc": ["body", "name"],
                "msg": "Input should be a valid string",
                "input": 5,
            },
            {
                "type": "extra_forbidden",
                "loc": ["body", "temperature"],
                "msg": "Extra inputs are not permitted",
                "input": 1,
            },
        ]
    }
    assert read(tenant, before["id"]) == before


def test_a_missing_or_another_tenants_assistant_is_404_at_the_edge(
    stack: Stack, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine = make(tenant)
    for who, assistant_id in ((other_tenant, mine["id"]), (tenant, "asst_nope")):
        response = modify(who, assistant_id, {"name": "x"}, **{"Idempotency-Key": "k"})
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "No assistant found"}
    store = stack.db
    assert store.jobs.count_documents({"tenant": other_tenant.name}) == 0
    assert read(tenant, mine["id"]) == mine
    # The key was not recorded: once the assistant exists, the same key is accepted.
    assert modify(tenant, mine["id"], {"name": "x"}, **{"Idempotency-Key": "k"}).status_code == 202


def test_edge_checks_are_those_of_a_create(tenant: Tenant) -> None:
    before = make(tenant)
    path = f"/v1/assistants/{before['id']}"
    empty = tenant.request("POST", path, data=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["type"] == "missing"
    text = tenant.request("POST", path, data=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    broken = tenant.request(
        "POST", path, data=b'{"name": NaN}', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"


def test_idempotency_key_replays_the_modify_and_refuses_another_body(tenant: Tenant) -> None:
    before = make(tenant)
    key = {"Idempotency-Key": "rename-1"}
    first = modify(tenant, before["id"], {"name": "A"}, Prefer="wait=30", **key)
    assert first.status_code == 200, first.text
    again = modify(tenant, before["id"], {"name": "A"}, Prefer="wait=30", **key)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json() == first.json()
    other = modify(tenant, before["id"], {"name": "B"}, **key)
    assert other.status_code == 409
    assert read(tenant, before["id"])["name"] == "A"


def test_modifies_of_one_assistant_apply_in_acceptance_order(deployment: Stack) -> None:
    """Many modifies sent without waiting: each job's result is the assistant as
    that modify left it, in the order they were accepted, and the last one stays.
    Through the real deployment, whose worker processes take jobs side by side."""
    tenant = deployment.new_tenant()
    before = make(tenant)
    jobs = []
    for index in range(30):
        change = {"name": f"n{index:02d}"} if index % 3 else {"metadata": {"i": str(index)}}
        response = modify(tenant, before["id"], change)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    name, metadata = before["name"], before["metadata"]
    for index, job_id in enumerate(jobs):
        finished = tenant.wait_job(job_id)
        assert finished["status"] == "succeeded", finished
        if index % 3:
            name = f"n{index:02d}"
        else:
            metadata = {"i": str(index)}
        body = finished["result"]["body"]
        assert (body["name"], body["metadata"]) == (name, metadata), index
    assert read(tenant, before["id"]) == {**before, "name": name, "metadata": metadata}


def test_modifies_racing_a_delete_finish_as_404_and_never_bring_it_back(
    deployment: Stack,
) -> None:
    tenant = deployment.new_tenant()
    assistants = [make(tenant, {"model": "m", "name": f"r{i}"}) for i in range(4)]

    def race(assistant: dict[str, Any]) -> list[dict[str, Any]]:
        path = f"/v1/assistants/{assistant['id']}"
        jobs = [modify(tenant, assistant["id"], {"name": f"x{i}"}).json() for i in range(3)]
        assert tenant.request("DELETE", path).status_code == 200
        jobs.append(modify(tenant, assistant["id"], {"name": "late"}).json())
        return jobs

    with ThreadPoolExecutor(max_workers=4) as pool:
        raced = list(pool.map(race, assistants))
    for assistant, jobs in zip(assistants, raced, strict=True):
        assert jobs[-1] == {"detail": "No assistant found"}  # after the delete: 404 at the edge
        for job in jobs[:-1]:
            finished = tenant.wait_job(job["id"])
            assert finished["result"]["status_code"] in (200, 404), finished
            if finished["result"]["status_code"] == 404:
                assert finished["status"] == "failed"
                assert finished["result"]["body"] == {"detail": "No assistant found"}
        response = tenant.request("GET", f"/v1/assistants/{assistant['id']}")
        assert response.status_code == 404
    assert tenant.request("GET", "/v1/assistants").json()["data"] == []


def test_modify_sends_job_succeeded_with_the_updated_object(tenant: Tenant) -> None:
    before = make(tenant)
    with Receiver() as hook:
        job = modify(
            tenant, before["id"], {"name": "Hooked"}, **{"Callback-URL": hook.url()}
        ).json()
        (request,) = hook.wait_for(1)
        event = Webhook(tenant.webhook_secret).verify(request.body, request.headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["result"] == {
        "status_code": 200,
        "body": {**before, "name": "Hooked"},
    }
    assert event["data"] == tenant.request("GET", f"/v1/jobs/{job['id']}").json()


def test_batch_lines_modify_and_delete_with_per_line_results(tenant: Tenant) -> None:
    made = [make(tenant, {"model": "m", "name": f"b{i}"}) for i in range(3)]
    url = "/v1/assistants/{}"
    lines = [
        {"custom_id": "m0", "method": "POST", "url": url.format(made[0]["id"]),
         "body": {"name": "B0", "metadata": {"k": "v"}}},
        {"custom_id": "bad", "method": "POST", "url": url.format(made[1]["id"]),
         "body": {"name": 1}},
        {"custom_id": "d1", "method": "DELETE", "url": url.format(made[1]["id"])},
        {"custom_id": "m1", "method": "POST", "url": url.format(made[1]["id"]),
         "body": {"name": "too late"}},
        {"custom_id": "m0b", "method": "POST", "url": url.format(made[0]["id"]),
         "body": {"description": "second"}},
        {"custom_id": "none", "method": "DELETE", "url": url.format("asst_missing")},
        {"custom_id": "new", "method": "POST", "url": "/v1/assistants", "body": {"model": "m"}},
    ]  # fmt: skip
    response = submit(tenant, jsonl(lines))
    assert response.status_code == 202, response.text
    batch = finished_batch(tenant, response.json()["id"])
    assert batch["request_counts"] == {
        "total": 7, "completed": 4, "failed": 3, "cancelled": 0,
        "created": 1, "updated": 2, "unchanged": 0, "deleted": 1,
    }  # fmt: skip
    rows = {row["custom_id"]: row for row in results(tenant, batch["id"])}
    assert list(rows) == [line["custom_id"] for line in lines]
    first = {**made[0], "name": "B0", "metadata": {"k": "v"}}
    assert (rows["m0"]["status_code"], rows["m0"]["body"]) == (200, first)
    assert rows["bad"]["status_code"] == 422
    assert rows["bad"]["body"]["detail"][0]["loc"] == ["body", "name"]
    assert rows["d1"]["status_code"] == 200
    assert rows["d1"]["body"] == {
        "id": made[1]["id"],
        "object": "assistant.deleted",
        "deleted": True,
    }
    assert (rows["m1"]["status_code"], rows["m1"]["body"]) == (
        404,
        {"detail": "No assistant found"},
    )
    assert rows["m0b"]["body"] == {**first, "description": "second"}
    assert rows["none"]["status_code"] == 404
    assert rows["new"]["status_code"] == 200 and rows["new"]["body"]["object"] == "assistant"
    assert read(tenant, made[0]["id"]) == {**first, "description": "second"}
    assert tenant.request("GET", f"/v1/assistants/{made[1]['id']}").status_code == 404
    assert read(tenant, made[2]["id"]) == made[2]
    job = tenant.request("GET", f"/v1/jobs/{rows['d1']['job_id']}").json()
    assert job["status"] == "succeeded" and job["result"]["body"] == rows["d1"]["body"]


def test_batch_lines_may_not_modify_another_tenants_assistant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = make(other_tenant)
    lines = [
        {"method": "POST", "url": f"/v1/assistants/{theirs['id']}", "body": {"name": "mine"}},
        {"method": "DELETE", "url": f"/v1/assistants/{theirs['id']}"},
    ]
    batch = finished_batch(tenant, submit(tenant, jsonl(lines)).json()["id"])
    assert [row["status_code"] for row in results(tenant, batch["id"])] == [404, 404]
    assert read(other_tenant, theirs["id"]) == theirs


def test_bad_method_or_url_lines_are_refused_at_the_edge(tenant: Tenant) -> None:
    lines = [
        {"method": "PATCH", "url": "/v1/assistants/asst_1", "body": {}},
        {"method": "DELETE", "url": "/v1/assistants"},
        {"method": "DELETE"},
        {"method": "DELETE", "url": "/v1/assistants/asst_1", "body": {"name": "x"}},
        {"method": "POST", "url": "/v1/assistants/a/b", "body": {}},
        {"url": 5, "body": {}},
        {"method": "POST", "url": "/v1/assistants/asst_1"},
    ]
    response = submit(tenant, jsonl(lines))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(entry["loc"], entry["type"]) for entry in detail] == [
        (["body", 0, "method"], "literal_error"),
        (["body", 1, "url"], "string_pattern_mismatch"),
        (["body", 2, "url"], "missing"),
        (["body", 3, "body"], "extra_forbidden"),
        (["body", 4, "url"], "string_pattern_mismatch"),
        (["body", 5, "url"], "string_type"),
        (["body", 6, "body"], "missing"),
    ]
    ok = [{"method": "DELETE", "url": "/v1/assistants/asst_1", "body": None}]
    assert submit(tenant, json.dumps(ok[0]).encode()).status_code == 202


def test_a_delete_waits_for_the_changes_accepted_before_it(servers: Servers) -> None:
    own = Local(servers.settings())
    try:
        tenant = own.new_tenant()
        made = tenant.create({"model": "gpt-4", "name": "first"})
        own.worker.run_queued()
        assistant = tenant.request("GET", f"/v1/jobs/{made.json()['id']}").json()
        assistant_id = assistant["result"]["body"]["id"]
        # Accepted, not yet applied: nothing runs until the worker does below.
        renamed = modify(tenant, assistant_id, {"name": "second"})
        assert renamed.status_code == 202
        with own.worker.running():
            gone = tenant.request("DELETE", f"/v1/assistants/{assistant_id}")
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"id": assistant_id, "object": "assistant.deleted", "deleted": True}
        # The modify applied first (a delete ahead of it would have made it a 404).
        job = tenant.request("GET", f"/v1/jobs/{renamed.json()['id']}").json()
        assert (job["result"]["status_code"], job["result"]["body"]["name"]) == (200, "second")
        assert tenant.request("GET", f"/v1/assistants/{assistant_id}").status_code == 404
        # With nothing open, a delete is answered at once, and a second one is a 404.
        other = tenant.create({"model": "gpt-4"})
        own.worker.run_queued()
        other_job = tenant.request("GET", f"/v1/jobs/{other.json()['id']}").json()
        other_id = other_job["result"]["body"]["id"]
        assert tenant.request("DELETE", f"/v1/assistants/{other_id}").status_code == 200
        assert tenant.request("DELETE", f"/v1/assistants/{assistant_id}").status_code == 404
    finally:
        own.close()
