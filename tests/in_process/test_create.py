"""`POST /v1/assistants` and `GET /v1/jobs/{id}` end to end: edge, MongoDB, Celery, worker."""

from __future__ import annotations

import json
import threading

from bson import ObjectId

from tests.local import Local
from tests.stack import Stack, Tenant


def test_create_is_accepted_then_succeeds_with_the_assistant(tenant: Tenant) -> None:
    response = tenant.create({"model": "gpt-4", "name": "Helper"})
    assert response.status_code == 202
    job = response.json()
    assert job["object"] == "assistant.job"
    assert job["status"] == "queued"
    assert job["id"].startswith("job_") and len(job["id"]) >= 28
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Retry-After"] == "1"

    finished = tenant.wait_job(job["id"])
    assert finished["status"] == "succeeded"
    assert finished["attempts"] == 1
    assert finished["started_at"] is not None and finished["completed_at"] is not None
    result = finished["result"]
    assert result["status_code"] == 200
    assistant = result["body"]
    assert assistant["object"] == "assistant"
    assert assistant["id"].startswith("asst_") and len(assistant["id"]) >= 29
    assert ObjectId.is_valid(assistant["_id"])
    assert assistant["name"] == "Helper"
    assert assistant["description"] is None and assistant["instructions"] is None
    assert assistant["tools"] == [] and assistant["file_ids"] == [] and assistant["metadata"] == {}

    stored = tenant.request("GET", f"/v1/assistants/{assistant['id']}")
    assert stored.status_code == 200
    assert stored.json() == assistant


def test_prefer_wait_answers_200_with_the_assistant(tenant: Tenant) -> None:
    response = tenant.create({"model": "gpt-4"}, Prefer="wait=30")
    assert response.status_code == 200
    assert response.json()["object"] == "assistant"
    assert response.headers["Preference-Applied"] == "wait=30"
    assert response.headers["Location"].startswith("/v1/jobs/job_")


def test_prefer_wait_answers_422_with_the_detail(tenant: Tenant) -> None:
    response = tenant.create({"name": 5}, Prefer="respond-async, wait=30")
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", "model"],
                "msg": "Field required",
                "input": {"name": 5},
            },
            {
                "type": "string_type",
                "loc": ["body", "name"],
                "msg": "Input should be a valid string",
                "input": 5,
            },
        ]
    }
    job = tenant.request("GET", response.headers["Location"]).json()
    assert job["status"] == "failed"
    assert job["result"]["status_code"] == 422


def test_prefer_wait_above_60_is_taken_as_60(tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, Prefer="wait=999999")
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=60"


def test_respond_async_answers_202_at_once(tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, Prefer="respond-async")
    assert response.status_code == 202


def test_get_job_long_polls_until_finished(tenant: Tenant) -> None:
    job = tenant.create({"model": "m"}).json()
    response = tenant.request("GET", f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=30"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert "Retry-After" not in response.headers


def test_missing_or_unknown_key_is_401_with_challenge(local: Local) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = local.client().post("/v1/assistants", json={"model": "m"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert isinstance(response.get_json()["detail"], str)


def test_revoked_key_is_401(stack: Stack) -> None:
    from worker.store import tenants

    owner = stack.new_tenant()
    store = stack.db
    assert tenants.revoke_key(store, owner.api_key)
    assert owner.create({"model": "m"}).status_code == 401


def test_wrong_content_type_is_415(tenant: Tenant) -> None:
    response = tenant.request(
        "POST", "/v1/assistants", data=b'{"model": "m"}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


def test_body_over_the_limit_is_413(tenant: Tenant) -> None:
    body = json.dumps({"model": "m", "instructions": "x" * (1024 * 1024)}).encode()
    response = tenant.request(
        "POST", "/v1/assistants", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_body_of_exactly_the_limit_is_accepted(tenant: Tenant) -> None:
    limit = 1024 * 1024
    head = b'{"model": "m", "instructions": "'
    tail = b'"}'
    body = head + b"x" * (limit - len(head) - len(tail)) + tail
    assert len(body) == limit
    response = tenant.request(
        "POST", "/v1/assistants", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202
    # 1 MiB of instructions is over the schema's 32768 characters: a 422 result.
    job = tenant.wait_job(response.json()["id"])
    assert job["result"]["status_code"] == 422
    assert job["result"]["body"]["detail"][0]["type"] == "string_too_long"


def test_invalid_json_is_422_json_invalid_and_nothing_is_stored(
    stack: Stack, tenant: Tenant
) -> None:
    cases = {
        b'{"model": "m",}': 14,
        b"\xff\xfe{}": 0,
        b'{"model": NaN}': 10,
        b'{"model": "\\ud800"}': 11,
        b"[" * 10000 + b"]" * 10000: 64,
        b'{"model": "m", "n": 123456789012345678901234567890}': 20,
    }
    for body, offset in cases.items():
        response = tenant.request(
            "POST", "/v1/assistants", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, body[:40]
        (entry,) = response.json()["detail"]
        assert entry["type"] == "json_invalid"
        assert entry["loc"] == ["body", offset], body[:40]
        assert entry["msg"] == "JSON decode error"
        assert "error" in entry["ctx"]
    store = stack.db
    assert store.jobs.count_documents({"tenant": tenant.name}) == 0


def test_empty_body_is_422_missing(tenant: Tenant) -> None:
    response = tenant.request(
        "POST", "/v1/assistants", data=b"", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "missing"
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_idempotency_key_replays_the_same_job(tenant: Tenant) -> None:
    first = tenant.create({"model": "m"}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    tenant.wait_job(first.json()["id"])
    again = tenant.create({"model": "m"}, **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "succeeded"
    waited = tenant.create({"model": "m"}, **{"Idempotency-Key": "k-1", "Prefer": "wait=5"})
    assert waited.status_code == 200
    assert waited.json() == again.json()["result"]["body"]


def test_idempotency_key_with_other_body_is_409(tenant: Tenant) -> None:
    assert tenant.create({"model": "m"}, **{"Idempotency-Key": "k-2"}).status_code == 202
    assert tenant.create({"model": "other"}, **{"Idempotency-Key": "k-2"}).status_code == 409


def test_idempotency_keys_are_scoped_by_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    mine = tenant.create({"model": "m"}, **{"Idempotency-Key": "shared"}).json()
    theirs = other_tenant.create({"model": "m"}, **{"Idempotency-Key": "shared"}).json()
    assert mine["id"] != theirs["id"]


def test_concurrent_duplicates_get_one_job(tenant: Tenant) -> None:
    ids: list[str] = []

    def submit() -> None:
        response = tenant.create({"model": "m"}, **{"Idempotency-Key": "race"})
        assert response.status_code == 202
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1


def test_idempotency_key_over_255_chars_is_422(tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, **{"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_bad_callback_urls_are_422_at_the_header(stack: Stack, tenant: Tenant) -> None:
    cases = {
        "not a url": "url_parsing",
        "file:///etc/passwd": "url_scheme",
        "ftp://x.org/": "url_scheme",
    }
    for url, kind in cases.items():
        response = tenant.create({"model": "m"}, **{"Callback-URL": url})
        assert response.status_code == 422, url
        (entry,) = response.json()["detail"]
        assert entry["loc"] == ["header", "callback-url"]
        assert entry["type"] == kind


def test_callback_url_is_stored_on_the_job(tenant: Tenant) -> None:
    job = tenant.create({"model": "m"}, **{"Callback-URL": "http://127.0.0.1:9/hook"}).json()
    assert job["callback_url"] == "http://127.0.0.1:9/hook"


def test_another_tenants_job_and_assistant_are_404(tenant: Tenant, other_tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, Prefer="wait=30")
    assistant = response.json()
    job_path = response.headers["Location"]
    assert other_tenant.request("GET", job_path).status_code == 404
    assert other_tenant.request("GET", f"/v1/assistants/{assistant['id']}").status_code == 404
    assert other_tenant.request("GET", "/v1/jobs/job_doesnotexist000000000000").status_code == 404


def test_every_allowed_value_round_trips(tenant: Tenant) -> None:
    body = {
        "model": "gpt-4\u0000x",
        "name": "😀" * 256,
        "description": "d" * 512,
        "instructions": "i" * 32768,
        "tools": [
            {"type": "code_interpreter"},
            {"type": "retrieval"},
            {
                "type": "function",
                "function": {
                    "name": "f_1-x",
                    "description": "d",
                    "parameters": {"type": "object", "$ref": "#/a.b"},
                },
            },
        ],
        "file_ids": [f"file-{i}" for i in range(20)],
        "metadata": {
            "$where": "1",
            "a.b": "2",
            "": "3",
            "nul\u0000key": "v\u0000",
            "k" * 64: "v" * 512,
            **{f"m{i}": "x" for i in range(11)},
        },
    }
    assert len(body["metadata"]) == 16
    response = tenant.create(body, Prefer="wait=30")
    assert response.status_code == 200, response.text
    assistant = response.json()
    for field, value in body.items():
        assert assistant[field] == value, field
    assert tenant.request("GET", f"/v1/assistants/{assistant['id']}").json() == assistant


def test_request_id_is_echoed_or_made(tenant: Tenant) -> None:
    given = tenant.create({"model": "m"}, **{"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = tenant.create({"model": "m"})
    assert made.headers["X-Request-ID"]
