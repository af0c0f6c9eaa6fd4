"""Webhooks that explain themselves: the test event, the receiver's answer on each
attempt, 410 Gone, recovering what failed, and Retry-After for the endpoint.

Through the in-process deployment (the edge, the worker's services, real
Valkey and SecantusDB) with a real receiver on loopback; events verified with
the `standardwebhooks` package.
"""

from __future__ import annotations

import logging
import time
from itertools import pairwise
from typing import Any

import pytest
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook

from cli.embedded import free_port
from tests.local import LocalTenant
from tests.receiver import Receiver, Reply
from tests.stack import wait_until
from worker.store.connection import Store


def all_deliveries(tenant: LocalTenant) -> list[dict[str, Any]]:
    page = tenant.request("GET", "/v1/webhook_deliveries", params={"limit": 100}).json()
    found: list[dict[str, Any]] = page["data"]
    return found


def endpoint(tenant: LocalTenant) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/webhook_endpoint")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def set_endpoint(tenant: LocalTenant, url: str) -> None:
    response = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": url})
    assert response.status_code == 200, response.text


# -- the test event -------------------------------------------------------


def test_the_test_event_is_signed_and_verifies_with_standardwebhooks(
    tenant: LocalTenant,
) -> None:
    assert tenant.request("POST", "/v1/webhook_endpoint/test").status_code == 404
    with Receiver() as hook:
        set_endpoint(tenant, hook.url("/tenant"))
        sent = tenant.request("POST", "/v1/webhook_endpoint/test")
        assert sent.status_code == 202, sent.text
        queued = sent.json()
        assert queued["object"] == "webhook_delivery"
        assert queued["event_type"] == "webhook.test"
        assert sent.headers["Location"] == f"/v1/webhook_deliveries/{queued['id']}"
        (request,) = hook.wait_for(1)
        again = tenant.request("POST", "/v1/webhook_endpoint/test").json()
        hook.wait_for(2)

    event = Webhook(tenant.webhook_secret).verify(request.body, request.headers)
    assert event["type"] == "webhook.test"
    assert event["data"]["object"] == "webhook_endpoint.test"
    assert event["data"]["url"] == hook.url("/tenant")
    assert request.path == "/tenant"
    assert request.headers["webhook-id"] == queued["id"]
    assert again["id"] != queued["id"]  # each test is an event of its own
    assert tenant.wait_delivery(queued["id"])["status"] == "delivered"


# -- the receiver's answer -------------------------------------------------


def test_each_attempt_shows_the_receivers_status_headers_and_the_start_of_its_body(
    tenant: LocalTenant, db: Store
) -> None:
    long_body = ("é" * 700).encode()  # 1,400 bytes: cut at 1 KiB
    with Receiver() as hook:
        hook.then(
            Reply(
                503,
                {
                    "Content-Type": "text/plain; charset=utf-8",
                    "Retry-After": "1",
                    "Set-Cookie": "s=1",
                },
                long_body,
            )
        )
        hook.then(Reply(200, {"Content-Type": "application/json"}, b'{"ok": true}'))
        tenant.create({"model": "m"}, **{"Callback-URL": hook.url()})
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)

    failed, delivered = found["attempts"]
    assert failed["status_code"] == 503
    assert failed["response"]["status_code"] == 503
    assert failed["response"]["headers"] == {
        "content-type": "text/plain; charset=utf-8",
        "retry-after": "1",
    }
    assert failed["response"]["body_truncated"] is True
    assert len(failed["response"]["body"].encode()) <= 1024 + 3
    assert failed["response"]["body"].startswith("é" * 500)
    assert delivered["response"] == {
        "status_code": 200,
        "headers": {"content-type": "application/json"},
        "body": '{"ok": true}',
        "body_truncated": False,
    }
    # Nothing of the request is kept: its signature, the secret.
    stored = str(db.deliveries.find_one({"_id": msg_id}))
    assert "webhook-signature" not in stored and "v1," not in stored
    assert tenant.webhook_secret.removeprefix("whsec_") not in stored


def test_a_network_failure_shows_its_error_and_no_answer(tenant: LocalTenant) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    job = tenant.create({"model": "m"}, **{"Callback-URL": closed}).json()
    tenant.wait_job(job["id"])
    found = wait_until(lambda: (ds := all_deliveries(tenant)) and ds[0]["attempts"] and ds[0])
    (first, *_) = found["attempts"]
    assert first["status_code"] is None and first["response"] is None
    assert first["error"].startswith("network:")


# -- 410 Gone, held deliveries, re-enabling and recovering ------------------


def disabled_count(reason: str) -> float:
    sample = REGISTRY.get_sample_value(
        "assistant_ingest_webhook_endpoints_disabled_total", {"reason": reason}
    )
    return sample or 0.0


def test_410_disables_the_endpoint_holds_later_events_and_recover_sends_them_after_put(
    tenant: LocalTenant, db: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    since, counted = int(time.time()) - 1, disabled_count("gone")
    with Receiver() as hook:
        set_endpoint(tenant, hook.url("/tenant"))
        hook.then(Reply(410, body=b"gone for good"))
        tenant.create({"model": "m"})
        (gone,) = hook.wait_for(1)
        disabled = wait_until(lambda: (e := endpoint(tenant))["status"] == "disabled" and e)
        assert disabled["disabled_at"] >= since
        assert disabled["disabled_reason"] == "gone: the endpoint answered 410 Gone"
        refused = tenant.wait_delivery(gone.headers["webhook-id"])
        assert refused["attempts"][0]["response"]["body"] == "gone for good"
        # Shown in the metrics and the log.
        assert disabled_count("gone") == counted + 1
        assert any(
            r.getMessage() == f"webhook endpoint of {tenant.name} disabled: {reason}"
            for r in caplog.records
            if (reason := disabled["disabled_reason"])
        )

        # While disabled, events are kept as failed and never attempted.
        for _ in range(3):
            tenant.create({"model": "m"}, Prefer="wait=30")
        held = wait_until(
            lambda: (
                len(ds := [d for d in all_deliveries(tenant) if d["error"]]) == 3
                and all(d["status"] == "failed" for d in ds)
                and ds
            )
        )
        assert all(d["error"] == "endpoint disabled" and d["attempts"] == [] for d in held)
        time.sleep(1)  # the sweep has run meanwhile
        assert len(hook.requests) == 1

        # PUT enables it again; recover sends what failed, with the same ids.
        set_endpoint(tenant, hook.url("/tenant"))
        assert endpoint(tenant)["status"] == "enabled"
        assert endpoint(tenant)["disabled_reason"] is None
        recovered = tenant.request("POST", "/v1/webhook_deliveries/recover", json={"since": since})
        assert recovered.status_code == 200, recovered.text
        assert recovered.json() == {
            "object": "webhook_deliveries.recovery",
            "queued": 4,
            "has_more": False,
        }
        # At a bounded pace: due one after another (10 a second by default).
        recovering = [d["id"] for d in held] + [gone.headers["webhook-id"]]
        dues = sorted(
            d["next_attempt_at"] for d in db.deliveries.find({"_id": {"$in": recovering}})
        )
        assert len(dues) == 4 and all(b - a >= 0.09 for a, b in pairwise(dues))
        arrived = hook.wait_for(5)

    held_ids = {d["id"] for d in held}
    assert {r.headers["webhook-id"] for r in arrived[1:]} == held_ids | {gone.headers["webhook-id"]}
    for request in arrived[1:]:
        Webhook(tenant.webhook_secret).verify(request.body, request.headers)
    assert all(tenant.wait_delivery(i)["status"] == "delivered" for i in held_ids)


def test_recover_takes_only_the_window_and_the_event_type_asked(tenant: LocalTenant) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    job = tenant.create({"model": "m"}, **{"Callback-URL": closed}).json()
    tenant.wait_job(job["id"])
    wait_until(lambda: (ds := all_deliveries(tenant)) and ds[0]["status"] == "failed", 60)
    created = all_deliveries(tenant)[0]["created_at"]

    def recover(**body: Any) -> Any:
        return tenant.request("POST", "/v1/webhook_deliveries/recover", json=body)

    assert recover(since=created + 1).json()["queued"] == 0
    assert recover(since=0, until=created - 1).json()["queued"] == 0
    assert recover(since=0, event_type="batch.completed").json()["queued"] == 0
    assert recover(since=created, event_type="job.succeeded").json()["queued"] == 1
    # Pending again: a second call finds nothing failed.
    assert recover(since=0).json()["queued"] == 0
    assert recover().status_code == 422
    assert recover(since="yesterday").status_code == 422
    assert recover(since=0, other=1).status_code == 422


# -- Retry-After for the endpoint -------------------------------------------


def test_a_429_retry_after_holds_the_endpoints_other_deliveries_too(tenant: LocalTenant) -> None:
    with Receiver() as hook:
        hook.then(Reply(429, {"Retry-After": "3"}))
        tenant.create({"model": "m"}, **{"Callback-URL": hook.url("/a")})
        (asked,) = hook.wait_for(1)
        for _ in range(3):
            tenant.create({"model": "m"}, **{"Callback-URL": hook.url("/b")})
        later = hook.wait_for(5, timeout=60)[1:]

    # The other deliveries to that origin waited out the 3 s too (their own
    # schedule would have sent them at once).
    assert all(request.at >= asked.at + 2.5 for request in later), [
        round(r.at - asked.at, 2) for r in later
    ]
