"""`/v1/batches`: bulk provisioning end to end on real servers and workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.local import NO_BULK, Local, running_local
from tests.stack import Servers, Stack, Tenant, wait_until
from worker.store.connection import Store

JSONL = {"Content-Type": "application/x-ndjson"}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def submit(tenant: Tenant, data: bytes, **headers: str) -> Any:
    return tenant.request("POST", "/v1/batches", data=data, headers={**JSONL, **headers})


def finished_batch(tenant: Tenant, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        batch: dict[str, Any] = tenant.request("GET", f"/v1/batches/{batch_id}").json()
        return batch if batch["status"] in ("completed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, timeout=timeout)
    return result


def results(tenant: Tenant, batch_id: str, query: str = "") -> list[dict[str, Any]]:
    response = tenant.request("GET", f"/v1/batches/{batch_id}/results{query}", stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line]


def test_jsonl_batch_completes_with_counts_and_ordered_results(tenant: Tenant) -> None:
    lines = [
        {"custom_id": f"r{i}", "body": {"model": "gpt-4", "name": f"n{i}"}} for i in range(1200)
    ]
    lines[7]["body"] = {"name": 5}  # fails validation in the worker: a 422 result
    lines[900]["body"] = {"model": "m", "bogus": True}
    response = submit(tenant, jsonl(lines))
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["object"] == "batch"
    assert batch["id"].startswith("batch_")
    assert batch["status"] == "in_progress"
    assert batch["request_counts"]["total"] == 1200
    assert response.headers["Location"] == f"/v1/batches/{batch['id']}"

    done = finished_batch(tenant, batch["id"])
    assert done["status"] == "completed"
    assert done["completed_at"] is not None
    assert done["request_counts"] == {
        "total": 1200, "completed": 1198, "failed": 2, "cancelled": 0,
        "created": 1198, "updated": 0, "unchanged": 0, "deleted": 0,
    }  # fmt: skip

    rows = results(tenant, batch["id"])
    assert [row["custom_id"] for row in rows] == [f"r{i}" for i in range(1200)]
    assert rows[0]["status_code"] == 200
    assert rows[0]["body"]["name"] == "n0"
    assert rows[7]["status_code"] == 422
    assert rows[7]["body"]["detail"][0]["loc"] == ["body", "model"]
    assert len({row["body"]["id"] for row in rows if row["status_code"] == 200}) == 1198

    failed = results(tenant, batch["id"], "?status=failed")
    assert [row["custom_id"] for row in failed] == ["r7", "r900"]

    job = tenant.request("GET", f"/v1/jobs/{rows[0]['job_id']}").json()
    assert job["batch_id"] == batch["id"]
    assert job["custom_id"] == "r0"
    assert job["status"] == "succeeded"
    assert job["result"]["body"] == rows[0]["body"]


def test_openai_batch_lines_blank_lines_crlf_and_bom_are_accepted(tenant: Tenant) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/assistants", "body": {"model": "m"}}
    data = b"\xef\xbb\xbf" + json.dumps(line).encode() + b"\r\n\r\n" + b'{"body": {"model": "m"}}'
    response = submit(tenant, data)
    assert response.status_code == 202, response.text
    batch = finished_batch(tenant, response.json()["id"])
    assert batch["request_counts"]["completed"] == 2
    # The line without custom_id is line 2 (the blank line 1 keeps its number).
    assert [row["custom_id"] for row in results(tenant, batch["id"])] == ["a", "2"]


def test_json_form_with_metadata(tenant: Tenant) -> None:
    body = {
        "requests": [{"custom_id": "x", "body": {"model": "m"}}, {"body": {"model": "m"}}],
        "metadata": {"project": "demo", "$odd.key": "v"},
    }
    response = tenant.request("POST", "/v1/batches", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == {"project": "demo", "$odd.key": "v"}
    batch = finished_batch(tenant, response.json()["id"])
    assert batch["request_counts"]["completed"] == 2
    assert [row["custom_id"] for row in results(tenant, batch["id"])] == ["x", "1"]


def test_bad_lines_reject_the_whole_batch_and_create_nothing(stack: Stack, tenant: Tenant) -> None:
    data = b"\n".join(
        [
            b'{"custom_id": "a", "body": {"model": "m"}}',
            b'{"custom_id": "a", "body": {"model": "m"}}',
            b"[1, 2]",
            b'{"method": "POST"}',
            b'{"custom_id": "d", "method": "GET", "url": "/v1/assistants", "body": {}}',
            b'{"custom_id": "e", "body": {"model": NaN}}',
            b'{"custom_id": "' + b"x" * 65 + b'", "body": {}}',
            b'{"custom_id": "3", "body": {}}',
        ]
    )
    response = submit(tenant, data)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(entry["loc"][:2], entry["type"]) for entry in detail] == [
        (["body", 1], "duplicate_custom_id"),
        (["body", 2], "dict_type"),
        (["body", 3], "missing"),
        (["body", 4], "literal_error"),
        (["body", 5], "json_invalid"),
        (["body", 6], "string_too_long"),
        (["body", 7], "duplicate_custom_id"),
    ]
    assert tenant.request("GET", "/v1/batches").json()["data"] == []
    store = stack.db
    assert store.jobs.count_documents({"tenant": tenant.name}) == 0
    assert store.batches.count_documents({"tenant": tenant.name}) == 0


def test_line_errors_are_the_line_models_own(tenant: Tenant) -> None:
    lines = [
        {"custom_id": None, "body": {}},
        {"custom_id": "", "method": "GET", "url": "/v1/x", "body": {}, "extra": 1},
        "text",
    ]
    response = submit(tenant, jsonl(lines))
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "string_type",
            "loc": ["body", 0, "custom_id"],
            "msg": "Input should be a valid string",
            "input": None,
        },
        {
            "type": "string_too_short",
            "loc": ["body", 1, "custom_id"],
            "msg": "String should have at least 1 character",
            "input": "",
            "ctx": {"min_length": 1},
        },
        {
            "type": "literal_error",
            "loc": ["body", 1, "method"],
            "msg": "Input should be 'POST' or 'DELETE'",
            "input": "GET",
            "ctx": {"expected": "'POST' or 'DELETE'"},
        },
        {
            "type": "string_pattern_mismatch",
            "loc": ["body", 1, "url"],
            "msg": "String should match pattern '^/v1/assistants(/[A-Za-z0-9_-]{1,255})?$'",
            "input": "/v1/x",
            "ctx": {"pattern": "^/v1/assistants(/[A-Za-z0-9_-]{1,255})?$"},
        },
        {
            "type": "extra_forbidden",
            "loc": ["body", 1, "extra"],
            "msg": "Extra inputs are not permitted",
            "input": 1,
        },
        {
            "type": "dict_type",
            "loc": ["body", 2],
            "msg": "Input should be a valid dictionary",
            "input": "text",
        },
    ]


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v", "n": 5, "long": "x" * 513},
    ],
    ids=["17-pairs", "key-and-values"],
)
def test_json_form_metadata_is_refused_as_an_assistants_metadata(
    tenant: Tenant, metadata: dict[str, Any]
) -> None:
    batch = tenant.request(
        "POST", "/v1/batches", json={"requests": [{"body": {"model": "m"}}], "metadata": metadata}
    )
    assert batch.status_code == 422
    create = tenant.create({"model": "m", "metadata": metadata}, Prefer="wait=30")
    assert create.status_code == 422
    assert batch.json()["detail"] == create.json()["detail"]
    if len(metadata) == 17:
        assert batch.json()["detail"] == [
            {
                "type": "too_long",
                "loc": ["body", "metadata"],
                "msg": "Dictionary should have at most 16 items after validation, not more",
                "input": metadata,
                "ctx": {"field_type": "Dictionary", "max_length": 16, "actual_length": None},
            }
        ]


def test_at_most_100_offending_lines_are_listed(tenant: Tenant) -> None:
    response = submit(tenant, b"[]\n" * 150)
    assert response.status_code == 422
    assert len(response.json()["detail"]) == 100


def test_empty_batch_is_422_too_short(tenant: Tenant) -> None:
    response = submit(tenant, b"\n\n")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "too_short"
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_json_form_errors_are_located_in_requests(tenant: Tenant) -> None:
    body = {"requests": [{"body": {}}, {"custom_id": "0", "body": {}}, 3], "extra": 1}
    response = tenant.request("POST", "/v1/batches", json=body)
    assert response.status_code == 422
    locs = [entry["loc"] for entry in response.json()["detail"]]
    assert locs == [
        ["body", "requests", 1, "custom_id"],
        ["body", "requests", 2],
        ["body", "extra"],
    ]


def test_wrong_content_type_is_415(tenant: Tenant) -> None:
    response = tenant.request(
        "POST", "/v1/batches", data=b"x", headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 415


def test_batch_idempotency_key(tenant: Tenant) -> None:
    data = jsonl([{"body": {"model": "m"}}])
    first = submit(tenant, data, **{"Idempotency-Key": "b-1"})
    again = submit(tenant, data, **{"Idempotency-Key": "b-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = submit(tenant, jsonl([{"body": {"model": "x"}}]), **{"Idempotency-Key": "b-1"})
    assert other.status_code == 409
    assert len(tenant.request("GET", "/v1/batches").json()["data"]) == 1


def test_a_refused_upload_does_not_keep_its_idempotency_key(tenant: Tenant) -> None:
    bad = submit(tenant, b'{"custom_id": 5}\n', **{"Idempotency-Key": "b-2"})
    assert bad.status_code == 422
    good = submit(tenant, jsonl([{"body": {"model": "m"}}]), **{"Idempotency-Key": "b-2"})
    assert good.status_code == 202
    assert "Idempotent-Replayed" not in good.headers


def test_concurrent_uploads_with_one_key_make_one_batch_and_replay_it(tenant: Tenant) -> None:
    data = jsonl([{"custom_id": f"c{i}", "body": {"model": "m"}} for i in range(1200)])
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda _: submit(tenant, data, **{"Idempotency-Key": "together"}), range(12))
        )
    assert [answer.status_code for answer in answers] == [202] * 12, [a.text for a in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    replayed = [answer.headers.get("Idempotent-Replayed") for answer in answers]
    assert replayed.count("true") == 11
    assert len(tenant.request("GET", "/v1/batches").json()["data"]) == 1


def test_batches_list_and_jobs_by_batch(tenant: Tenant) -> None:
    ids = []
    for _ in range(3):
        ids.append(submit(tenant, jsonl([{"body": {"model": "m"}}] * 3)).json()["id"])
    listed = tenant.request("GET", "/v1/batches?limit=2").json()
    assert listed["object"] == "list"
    assert listed["has_more"] is True
    rest = tenant.request("GET", f"/v1/batches?limit=2&after={listed['last_id']}").json()
    assert rest["has_more"] is False
    pages = listed["data"] + rest["data"]
    assert sorted(b["id"] for b in pages) == sorted(ids)
    # Newest first; batches made in the same second are ordered by id.
    keys = [(b["created_at"], b["id"]) for b in pages]
    assert keys == sorted(keys, reverse=True)

    finished_batch(tenant, ids[0])
    jobs = tenant.request("GET", f"/v1/jobs?batch_id={ids[0]}&limit=2").json()
    assert [j["custom_id"] for j in jobs["data"]] == ["0", "1"]
    assert jobs["has_more"] is True
    more = tenant.request("GET", f"/v1/jobs?batch_id={ids[0]}&after={jobs['last_id']}").json()
    assert [j["custom_id"] for j in more["data"]] == ["2"]
    assert tenant.request("GET", "/v1/jobs?status[$ne]=x").status_code == 422
    assert tenant.request("GET", "/v1/batches?limit=0").status_code == 422


def test_an_internal_chunk_id_is_no_cursor(tenant: Tenant) -> None:
    """A batch is stored as chunks `<batch id>.000000`, ...; such an id names no
    job, so as `after` it is 422 like any unknown id, not an empty page."""
    batch_id = submit(tenant, jsonl([{"body": {"model": "m"}}] * 2)).json()["id"]
    for query in (f"after={batch_id}.000000", f"batch_id={batch_id}&after={batch_id}.000000"):
        response = tenant.request("GET", f"/v1/jobs?{query}")
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", "after"]


def test_another_tenants_batch_is_404(tenant: Tenant, other_tenant: Tenant) -> None:
    batch_id = submit(tenant, jsonl([{"body": {"model": "m"}}])).json()["id"]
    for method, path in (
        ("GET", f"/v1/batches/{batch_id}"),
        ("GET", f"/v1/batches/{batch_id}/results"),
        ("POST", f"/v1/batches/{batch_id}/cancel"),
    ):
        assert other_tenant.request(method, path).status_code == 404
    assert other_tenant.request("GET", f"/v1/jobs?batch_id={batch_id}").json()["data"] == []


@pytest.fixture(scope="module")
def no_bulk_worker(servers: Servers) -> Iterator[Local]:
    """A deployment whose workers do not take batch chunks, and small limits."""
    limits = {
        "MAX_BATCH_REQUESTS": "5",
        "MAX_BATCH_BYTES": "4000",
        "CHUNK_SIZE": "2",
        "MAX_WAIT_SECONDS": str(REPEAT_WAIT),
        # Small batches take their turn like any other: none is run.
        "EXPRESS_BATCH_LINES": "0",
    }
    with running_local(servers.settings(**limits), NO_BULK) as deployment:
        yield deployment


def test_cancel_before_start_cancels_every_request(no_bulk_worker: Local) -> None:
    tenant = no_bulk_worker.new_tenant()
    batch = submit(tenant, jsonl([{"body": {"model": "m"}}] * 5)).json()
    cancelled = tenant.request("POST", f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] in ("cancelling", "cancelled")
    done = finished_batch(tenant, batch["id"])
    assert done["status"] == "cancelled"
    assert done["cancelled_at"] is not None
    assert done["request_counts"] == {
        "total": 5, "completed": 0, "failed": 0, "cancelled": 5,
        "created": 0, "updated": 0, "unchanged": 0, "deleted": 0,
    }  # fmt: skip
    rows = results(tenant, batch["id"])
    assert rows[0] == {
        "custom_id": "0",
        "job_id": rows[0]["job_id"],
        "status_code": None,
        "body": None,
        "action": None,
        "status": "cancelled",
    }
    assert len(rows) == 5
    job = tenant.request("GET", f"/v1/jobs/{rows[0]['job_id']}").json()
    assert job["status"] == "cancelled"
    again = tenant.request("POST", f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200
    assert again.json() == done


def test_over_the_request_limit_is_422_too_long(no_bulk_worker: Local) -> None:
    tenant = no_bulk_worker.new_tenant()
    response = submit(tenant, jsonl([{"body": {}}] * 6))
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "too_long"
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_over_the_byte_limit_is_413(no_bulk_worker: Local) -> None:
    tenant = no_bulk_worker.new_tenant()
    big = jsonl([{"body": {"model": "m", "name": "x" * 1000}}] * 5)
    assert len(big) > 4000
    assert submit(tenant, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield big

    response = tenant.request("POST", "/v1/batches", data=chunks(), headers=JSONL)
    assert response.status_code == 413
    assert tenant.request("GET", "/v1/batches").json()["data"] == []


def test_empty_and_over_long_cursors_are_422_with_pydantic_types(tenant: Tenant) -> None:
    empty = tenant.request("GET", "/v1/batches?after=").json()["detail"][0]
    assert (empty["loc"], empty["type"]) == (["query", "after"], "string_too_short")
    long = tenant.request("GET", "/v1/jobs?after=" + "x" * 256).json()["detail"][0]
    assert (long["loc"], long["type"]) == (["query", "after"], "string_too_long")


# -- one Idempotency-Key, an upload in flight ---------------------------------

REPEAT_WAIT = 5  # MAX_WAIT_SECONDS of no_bulk_worker: how long a repeat waits


class Trickle:
    """An upload sent in two parts, the last line only once `go` is set, so the
    request holds its key and is still being read meanwhile. (The edge reads an
    upload in blocks of 64 KiB, so under this stack's 4,000-byte limit nothing of
    it is stored before its last part arrives.)"""

    def __init__(self, tenant: Tenant, data: bytes, key: str, pool: ThreadPoolExecutor) -> None:
        self.go = threading.Event()
        cut = data.rindex(b"\n", 0, len(data) - 1) + 1
        head, tail = data[:cut], data[cut:]

        def parts() -> Iterator[bytes]:
            yield head
            self.go.wait(60)
            yield tail

        headers = {**JSONL, "Idempotency-Key": key}
        self.answer = pool.submit(
            tenant.request, "POST", "/v1/batches", data=parts(), headers=headers
        )


def holds_its_key(store: Store, tenant: Tenant) -> bool:
    """The first upload's batch is stored, and its Idempotency-Key names it."""
    batch = store.batches.find_one({"tenant": tenant.name}, {"_id": 1})
    return batch is not None and store.idempotency.count_documents({"target": batch["_id"]}) == 1


def long_lines() -> list[dict[str, Any]]:
    """Five lines of 650 bytes: within no_bulk_worker's limits, each over half a block."""
    return [{"custom_id": f"c{i}", "body": {"model": "m", "name": "x" * 600}} for i in range(5)]


def test_a_repeated_upload_waits_for_the_first_is_never_stored_and_is_replayed(
    no_bulk_worker: Local,
) -> None:
    tenant = no_bulk_worker.new_tenant()
    lines = long_lines()
    data = jsonl(lines)
    store = no_bulk_worker.db
    with ThreadPoolExecutor(3) as pool:
        first = Trickle(tenant, data, "k", pool)
        wait_until(lambda: holds_its_key(store, tenant))
        same = pool.submit(submit, tenant, data, **{"Idempotency-Key": "k"})
        other = pool.submit(submit, tenant, jsonl(lines[:1]), **{"Idempotency-Key": "k"})
        time.sleep(1)  # read whole by now, and waiting for the first
        assert not same.done() and not other.done()
        # Neither was stored, not even in part: one batch, every chunk its own.
        (batch,) = store.batches.find({"tenant": tenant.name})
        assert set(store.jobs.distinct("batch_id", {"tenant": tenant.name})) <= {batch["_id"]}
        first.go.set()
        accepted, repeated, different = first.answer.result(), same.result(), other.result()
    assert accepted.status_code == 202, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers
    assert repeated.status_code == 202, repeated.text
    assert repeated.json()["id"] == accepted.json()["id"]
    assert repeated.headers["Idempotent-Replayed"] == "true"
    assert different.status_code == 409, different.text


def test_a_repeated_upload_is_409_while_the_first_is_still_in_flight(
    no_bulk_worker: Local,
) -> None:
    tenant = no_bulk_worker.new_tenant()
    data = jsonl(long_lines())
    store = no_bulk_worker.db
    with ThreadPoolExecutor(1) as pool:
        first = Trickle(tenant, data, "slow", pool)
        try:
            wait_until(lambda: holds_its_key(store, tenant))
            started = time.monotonic()
            waited = submit(tenant, data, **{"Idempotency-Key": "slow"})
            assert time.monotonic() - started >= REPEAT_WAIT
        finally:
            first.go.set()
        accepted = first.answer.result()
    assert waited.status_code == 409, waited.text
    assert waited.headers["Retry-After"] == "1"
    assert "still being stored" in waited.json()["detail"]
    assert accepted.status_code == 202
    again = submit(tenant, data, **{"Idempotency-Key": "slow"})
    assert again.status_code == 202
    assert again.json()["id"] == accepted.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
