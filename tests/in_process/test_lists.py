"""Every list (`/v1/assistants`, `/v1/jobs`, `/v1/batches`,
`/v1/webhook_deliveries`) takes `limit`, `order`, `after` and `before`, and
pages through the same sequence whichever way it is walked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.local import Local, running_local
from tests.receiver import Receiver
from tests.stack import Servers, Tenant, wait_until

JSONL = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def chunks_of_3(servers: Servers) -> Iterator[Local]:
    """Chunks of 3: a batch's jobs share units, which pages cut through."""
    with running_local(servers.settings(CHUNK_SIZE="3")) as deployment:
        yield deployment


def page(tenant: Tenant, path: str, **params: Any) -> dict[str, Any]:
    response = tenant.request("GET", path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(found: dict[str, Any]) -> list[str]:
    return [item["id"] for item in found["data"]]


def walk_after(tenant: Tenant, path: str, limit: int, **params: Any) -> list[str]:
    found: list[str] = []
    while True:
        one = page(tenant, path, limit=limit, **params)
        found += ids(one)
        if not one["has_more"]:
            return found
        params["after"] = one["last_id"]


def walk_before(tenant: Tenant, path: str, limit: int, last: str, **params: Any) -> list[str]:
    """Back from `last` to the start, page by page, each page in the list's order."""
    found: list[str] = []
    before = last
    while True:
        one = page(tenant, path, limit=limit, before=before, **params)
        found = ids(one) + found
        if not one["has_more"]:
            return found
        before = one["first_id"]


def check_list(tenant: Tenant, path: str, oldest_first: list[str], default: str) -> None:
    newest_first = oldest_first[::-1]
    expected = {"asc": oldest_first, "desc": newest_first}
    assert ids(page(tenant, path, limit=100)) == expected[default]
    for order, every in expected.items():
        assert ids(page(tenant, path, limit=100, order=order)) == every
        assert walk_after(tenant, path, 2, order=order) == every
        assert walk_before(tenant, path, 2, every[-1], order=order) == every[:-1]
        between = page(tenant, path, order=order, after=every[1], before=every[-2])
        assert ids(between) == every[2:-2]
        assert not between["has_more"]


def test_the_jobs_list_pages_both_ways_through_units(chunks_of_3: Local) -> None:
    tenant = chunks_of_3.new_tenant()
    single = tenant.create({"model": "m"}, Prefer="wait=30").headers["Location"].rsplit("/", 1)[1]
    # Jobs of one second are ordered by their unit's id, not by acceptance:
    # the batch comes a second later, so the single create lists first.
    time.sleep(1.1)
    data = b"".join(
        json.dumps({"body": {"model": "m", "name": str(i)}}).encode() + b"\n" for i in range(7)
    )
    made = tenant.request("POST", "/v1/batches", data=data, headers=JSONL)
    assert made.status_code == 202, made.text
    batch_id = made.json()["id"]
    in_input_order = walk_after(tenant, "/v1/jobs", 100, batch_id=batch_id)
    assert len(in_input_order) == 7
    check_list(tenant, "/v1/jobs", [single, *in_input_order], "asc")
    # A batch's jobs, by chunk (units of 3): cursors inside a unit.
    path = "/v1/jobs"
    assert walk_after(tenant, path, 2, batch_id=batch_id, order="desc") == in_input_order[::-1]
    back = walk_before(tenant, path, 2, in_input_order[-1], batch_id=batch_id)
    assert back == in_input_order[:-1]
    inside = page(
        tenant, path, batch_id=batch_id, after=in_input_order[0], before=in_input_order[4]
    )
    assert ids(inside) == in_input_order[1:4]


def test_the_batches_list_pages_both_ways(tenant: Tenant) -> None:
    made = []
    for i in range(6):
        data = json.dumps({"body": {"model": "m", "name": str(i)}}).encode() + b"\n"
        response = tenant.request("POST", "/v1/batches", data=data, headers=JSONL)
        assert response.status_code == 202, response.text
        made.append(response.json())
    # Newest first by default; ties of created_at broken by id.
    oldest_first = [b["id"] for b in sorted(made, key=lambda b: (b["created_at"], b["id"]))]
    check_list(tenant, "/v1/batches", oldest_first, "desc")


def test_the_deliveries_list_pages_both_ways(tenant: Tenant) -> None:
    with Receiver() as hook:
        for i in range(6):
            response = tenant.create({"model": "m", "name": str(i)}, **{"Callback-URL": hook.url()})
            assert response.status_code == 202
        wait_until(lambda: len(page(tenant, "/v1/webhook_deliveries", limit=100)["data"]) == 6)
    oldest_first = ids(page(tenant, "/v1/webhook_deliveries", limit=100))
    check_list(tenant, "/v1/webhook_deliveries", oldest_first, "asc")


def test_the_assistants_list_pages_both_ways(tenant: Tenant) -> None:
    for i in range(6):
        assert tenant.create({"model": "m", "name": str(i)}, Prefer="wait=30").status_code == 200
    newest_first = ids(page(tenant, "/v1/assistants", limit=100))
    check_list(tenant, "/v1/assistants", newest_first[::-1], "desc")


@pytest.mark.parametrize(
    "path", ["/v1/assistants", "/v1/jobs", "/v1/batches", "/v1/webhook_deliveries"]
)
@pytest.mark.parametrize("name", ["after", "before"])
def test_an_unknown_cursor_is_422_at_its_name(tenant: Tenant, path: str, name: str) -> None:
    response = tenant.request("GET", path, params={name: "nothing_1"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", name]
    bad = tenant.request("GET", path, params={"order": "up"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "order"]
