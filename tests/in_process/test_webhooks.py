"""Webhooks end to end: events, Standard Webhooks signatures, retries, the
deliveries API, the tenant endpoint and secret rotation.

A real receiver on loopback takes the events; signatures are checked with
the `standardwebhooks` package. The shared deployment runs the FAST
settings (schedule 0,1,1,2: four attempts; a 2 s timeout).
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cli.embedded import free_port
from tests.local import Local
from tests.receiver import Drip, Endless, Hang, Received, Receiver, Reply
from tests.stack import FINAL_DELIVERY, Servers, Stack, Tenant, running_stack, wait_until
from worker.store.tenants import new_webhook_secret


def callback(url: str) -> dict[str, str]:
    return {"Callback-URL": url}


def deliveries(tenant: Tenant, **params: Any) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/webhook_deliveries", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def verify(secret: str, request: Received) -> dict[str, Any]:
    event: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return event


def codes(found: dict[str, Any]) -> list[int | None]:
    return [attempt["status_code"] for attempt in found["attempts"]]


def query_error(response: Any) -> tuple[list[Any], str]:
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    return entry["loc"], entry["type"]


# -- events ---------------------------------------------------------------


def test_job_succeeded_event_carries_the_200_object_and_is_signed(tenant: Tenant) -> None:
    with Receiver() as hook:
        job = tenant.create({"model": "gpt-4", "name": "Hooked"}, **callback(hook.url())).json()
        (request,) = hook.wait_for(1)
        event = verify(tenant.webhook_secret, request)
        found = tenant.wait_delivery(request.headers["webhook-id"])

    finished = tenant.request("GET", f"/v1/jobs/{job['id']}").json()
    assert event["type"] == "job.succeeded"
    assert event["data"] == finished
    assert finished["result"]["status_code"] == 200
    assert finished["result"]["body"]["object"] == "assistant"
    assert finished["result"]["body"]["name"] == "Hooked"
    assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    msg_id = request.headers["webhook-id"]
    assert msg_id.startswith("msg_") and len(msg_id) >= 28
    assert request.headers["webhook-signature"].startswith("v1,")

    assert found["id"] == msg_id
    assert found["event_type"] == "job.succeeded"
    assert found["url"] == hook.url()
    assert found["status"] == "delivered"
    assert found["next_attempt_at"] is None
    assert found["created_at"] <= found["attempts"][0]["at"]
    (attempt,) = found["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert isinstance(attempt["duration_ms"], int) and attempt["duration_ms"] >= 0


def readme_verify() -> Any:
    """The README's verification snippet, run as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (snippet,) = [block for block in blocks if "def verify(" in block]
    scope: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    return scope["verify"]


def test_the_readmes_verification_snippet_accepts_a_delivery_and_nothing_else(
    tenant: Tenant,
) -> None:
    verify_as_readme = readme_verify()
    with Receiver() as hook:
        tenant.create({"model": "m"}, **callback(hook.url()))
        (request,) = hook.wait_for(1)
    assert verify_as_readme(tenant.webhook_secret, request.headers, request.body)
    assert not verify_as_readme(tenant.webhook_secret, request.headers, request.body + b" ")
    # The whsec_ text used as the key, the mistake the README warns of, does not verify.
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
    raw = hmac.new(tenant.webhook_secret.encode(), signed.encode() + request.body, "sha256")
    wrong = {
        **request.headers,
        "webhook-signature": "v1," + base64.b64encode(raw.digest()).decode(),
    }
    assert not verify_as_readme(tenant.webhook_secret, wrong, request.body)


def test_job_failed_event_carries_the_422_detail(tenant: Tenant) -> None:
    with Receiver() as hook:
        job = tenant.create({"name": 5}, **callback(hook.url())).json()
        (request,) = hook.wait_for(1)
        event = verify(tenant.webhook_secret, request)

    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "failed"
    result = event["data"]["result"]
    assert result["status_code"] == 422
    assert [entry["loc"] for entry in result["body"]["detail"]] == [
        ["body", "model"],
        ["body", "name"],
    ]
    assert result == tenant.request("GET", f"/v1/jobs/{job['id']}").json()["result"]


# -- retries --------------------------------------------------------------


def test_failing_receiver_gets_retries_until_exactly_one_success_with_one_webhook_id(
    tenant: Tenant,
) -> None:
    with Receiver() as hook:
        hook.fail(2)
        tenant.create({"model": "m"}, **callback(hook.url()))
        first = hook.wait_for(1)[0]
        found = tenant.wait_delivery(first.headers["webhook-id"])
        requests = hook.requests

    assert found["status"] == "delivered"
    assert codes(found) == [500, 500, 200]
    assert [request.answered for request in requests] == [500, 500, 200]
    assert {request.headers["webhook-id"] for request in requests} == {found["id"]}
    # The body bytes never change; each attempt is signed afresh, and verifies.
    assert {request.body for request in requests} == {first.body}
    for request in requests:
        verify(tenant.webhook_secret, request)
    listed = deliveries(tenant, status="delivered")["data"]
    assert [d["id"] for d in listed] == [found["id"]]
    assert listed[0]["attempts"] == found["attempts"]
    assert deliveries(tenant, status="failed")["data"] == []


def test_410_ends_the_delivery_as_failed(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Reply(410))
        tenant.create({"model": "m"}, **callback(hook.url()))
        (request,) = hook.wait_for(1)
        found = tenant.wait_delivery(request.headers["webhook-id"])
        assert len(hook.requests) == 1

    assert found["status"] == "failed"
    assert codes(found) == [410]
    assert found["next_attempt_at"] is None


def test_429_retry_after_is_honoured(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Reply(429, {"Retry-After": "3"}))
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        waiting = wait_until(lambda: (d := tenant.delivery(msg_id))["attempts"] and d)
        found = tenant.wait_delivery(msg_id)
        first, second = hook.requests

    # The schedule says 1 s; the receiver asked for 3, and got them.
    assert waiting["status"] == "pending"
    assert codes(waiting) == [429]
    assert waiting["next_attempt_at"] >= waiting["attempts"][0]["at"] + 3
    assert second.at >= first.at + 3
    assert found["status"] == "delivered"
    assert codes(found) == [429, 200]


def test_retry_after_is_capped_at_one_hour(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Reply(429, {"Retry-After": "86400"}))
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        waiting = wait_until(lambda: (d := tenant.delivery(msg_id))["attempts"] and d)

    at = waiting["attempts"][0]["at"]
    assert waiting["status"] == "pending"
    assert at + 3600 - 1 <= waiting["next_attempt_at"] <= at + 3600 + 1


def test_timeout_is_a_failed_attempt_and_is_retried(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Hang())
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)
        requests = hook.requests

    assert found["status"] == "delivered"
    hung, answered = found["attempts"]
    assert hung["status_code"] is None and hung["error"].startswith("timeout")
    assert answered["status_code"] == 200
    assert [request.answered for request in requests] == [None, 200]
    assert {request.headers["webhook-id"] for request in requests} == {msg_id}


def test_slow_drip_answer_is_cut_at_the_total_deadline(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Drip(0.3))
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)

    dripped, answered = found["attempts"]
    assert dripped["status_code"] is None and dripped["error"].startswith("timeout")
    assert answered["status_code"] == 200
    assert found["status"] == "delivered"


def test_endless_response_body_is_read_only_up_to_a_cap(tenant: Tenant) -> None:
    with Receiver() as hook:
        hook.then(Endless())
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)

    # Reading it all would have run into the deadline: a timeout, not a 200.
    assert found["status"] == "delivered"
    assert codes(found) == [200]


def test_exhausted_delivery_is_failed_and_kept(stack: Stack, tenant: Tenant) -> None:
    attempts = len(stack.settings.webhook_schedule)
    with Receiver() as hook:
        hook.fail(attempts + 5)
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)
        assert len(hook.requests) == attempts

    assert found["status"] == "failed"
    assert codes(found) == [500] * attempts
    assert found["next_attempt_at"] is None
    assert [d["id"] for d in deliveries(tenant, status="failed")["data"]] == [msg_id]
    assert tenant.delivery(msg_id) == found


def test_retry_resends_a_failed_delivery_with_the_same_webhook_id(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    with Receiver() as hook:
        hook.then(Reply(410))
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        assert tenant.wait_delivery(msg_id)["status"] == "failed"

        assert (
            other_tenant.request("POST", f"/v1/webhook_deliveries/{msg_id}/retry").status_code
            == 404
        )
        retried = tenant.request("POST", f"/v1/webhook_deliveries/{msg_id}/retry")
        assert retried.status_code == 200
        assert retried.json()["status"] in ("pending", "delivered")
        found = tenant.wait_delivery(msg_id)
        first, second = hook.requests
        again = tenant.request("POST", f"/v1/webhook_deliveries/{msg_id}/retry")

    assert found["status"] == "delivered"
    assert codes(found) == [410, 200]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == msg_id
    assert first.body == second.body
    verify(tenant.webhook_secret, second)
    assert again.status_code == 409
    missing = tenant.request("POST", "/v1/webhook_deliveries/msg_000000000000000000000000/retry")
    assert missing.status_code == 404


def test_redirect_is_not_followed(tenant: Tenant) -> None:
    with Receiver() as target, Receiver() as hook:
        hook.then(Reply(302, {"Location": target.url()}))
        tenant.create({"model": "m"}, **callback(hook.url()))
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = tenant.wait_delivery(msg_id)
        assert target.requests == []
        assert len(hook.requests) == 1

    assert found["status"] == "failed"
    assert codes(found) == [302]


# -- the tenant's endpoint ------------------------------------------------


def test_tenant_endpoint_is_used_when_there_is_no_callback_url(
    stack: Stack, tenant: Tenant
) -> None:
    assert tenant.request("GET", "/v1/webhook_endpoint").status_code == 404
    unsent = tenant.create({"model": "m"}).json()
    tenant.wait_job(unsent["id"])
    assert_events_flushed(stack, unsent["id"])
    assert deliveries(tenant)["data"] == []  # no endpoint, no Callback-URL: no event

    with Receiver() as hook:
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url("/tenant")})
        assert put.status_code == 200
        assert put.json() == {
            "object": "webhook_endpoint",
            "url": hook.url("/tenant"),
            "status": "enabled",
            "failing_since": None,
            "disabled_at": None,
            "disabled_reason": None,
        }
        assert tenant.request("GET", "/v1/webhook_endpoint").json() == put.json()

        job = tenant.create({"model": "m"}).json()
        own = tenant.create({"model": "m"}, **callback(hook.url("/job"))).json()
        requests = hook.wait_for(2)

    events = {verify(tenant.webhook_secret, r)["data"]["id"]: r.path for r in requests}
    assert events == {job["id"]: "/tenant", own["id"]: "/job"}
    assert sorted(d["url"] for d in deliveries(tenant)["data"]) == [
        hook.url("/job"),
        hook.url("/tenant"),
    ]

    deleted = tenant.request("DELETE", "/v1/webhook_endpoint")
    assert deleted.status_code == 200
    assert deleted.json() == {"object": "webhook_endpoint.deleted", "deleted": True}
    assert tenant.request("GET", "/v1/webhook_endpoint").status_code == 404
    assert tenant.request("DELETE", "/v1/webhook_endpoint").status_code == 404


def assert_events_flushed(stack: Stack, job_id: str) -> None:
    """Wait until the worker has turned the job's owed events into deliveries."""
    store = stack.db
    wait_until(lambda: "events_pending" not in (store.jobs.find_one({"_id": job_id}) or {}))


@pytest.mark.parametrize(
    ("body", "loc", "type_"),
    [
        (b"", ["body"], "missing"),
        (b"{", ["body", 1], "json_invalid"),
        (b"[]", ["body"], "model_attributes_type"),
        (b"{}", ["body", "url"], "missing"),
        (b'{"url": 5}', ["body", "url"], "string_type"),
        (b'{"url": "https://example.com/", "x": 1}', ["body", "x"], "extra_forbidden"),
        (b'{"url": "ftp://example.com/"}', ["body", "url"], "url_scheme"),
        (b'{"url": "/relative"}', ["body", "url"], "url_parsing"),
    ],
)
def test_webhook_endpoint_body_is_validated(
    tenant: Tenant, body: bytes, loc: list[Any], type_: str
) -> None:
    response = tenant.request(
        "PUT", "/v1/webhook_endpoint", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert (entry["loc"], entry["type"]) == (loc, type_)
    assert tenant.request("GET", "/v1/webhook_endpoint").status_code == 404


def test_webhook_endpoint_needs_json(tenant: Tenant) -> None:
    response = tenant.request(
        "PUT", "/v1/webhook_endpoint", data="url=x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


# -- signing secrets --------------------------------------------------------


def test_after_rotation_both_secrets_sign(tenant: Tenant) -> None:
    old = tenant.webhook_secret
    rotated = tenant.request("POST", "/v1/webhook_secret/rotate")
    assert rotated.status_code == 200
    answer = rotated.json()
    new = answer["secret"]
    assert answer["object"] == "webhook_secret"
    assert new.startswith("whsec_") and new != old
    assert answer["previous_expires_at"] >= time.time() + 24 * 3600 - 60

    with Receiver() as hook:
        tenant.create({"model": "m"}, **callback(hook.url()))
        (request,) = hook.wait_for(1)

    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert verify(new, request) == verify(old, request)
    for secret in (new, old):
        verifies = []
        for signature in signatures:
            alone = Received(
                request.path,
                {**request.headers, "webhook-signature": signature},
                request.body,
                request.at,
                request.answered,
            )
            try:
                verify(secret, alone)
                verifies.append(signature)
            except WebhookVerificationError:
                pass
        assert len(verifies) == 1  # each signature is made with exactly one secret
    with pytest.raises(WebhookVerificationError):
        verify(new_webhook_secret(), request)


def test_rotations_keep_only_the_current_and_the_previous_secret(tenant: Tenant) -> None:
    made = [tenant.webhook_secret]
    for _ in range(30):
        rotated = tenant.request("POST", "/v1/webhook_secret/rotate")
        assert rotated.status_code == 200
        made.append(rotated.json()["secret"])

    with Receiver() as hook:
        tenant.create({"model": "m"}, **callback(hook.url()))
        (request,) = hook.wait_for(1)

    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in made[-2:]:
        verify(secret, request)
    for secret in made[:-2]:
        with pytest.raises(WebhookVerificationError):
            verify(secret, request)


# -- the deliveries list ----------------------------------------------------


def test_deliveries_list_pages_and_belongs_to_its_tenant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    with Receiver() as hook:
        for _ in range(3):
            tenant.create({"model": "m"}, **callback(hook.url()))
        ids = {r.headers["webhook-id"] for r in hook.wait_for(3)}
        for msg_id in ids:
            tenant.wait_delivery(msg_id)

    first = deliveries(tenant, limit=2)
    assert first["object"] == "list"
    assert len(first["data"]) == 2 and first["has_more"] is True
    assert first["first_id"] == first["data"][0]["id"]
    assert first["last_id"] == first["data"][1]["id"]
    rest = deliveries(tenant, limit=2, after=first["last_id"])
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    assert {d["id"] for d in first["data"] + rest["data"]} == ids

    assert deliveries(other_tenant)["data"] == []
    some = next(iter(ids))
    assert other_tenant.request("GET", f"/v1/webhook_deliveries/{some}").status_code == 404
    response = other_tenant.request("GET", "/v1/webhook_deliveries", params={"after": some})
    assert query_error(response) == (["query", "after"], "value_error")


@pytest.mark.parametrize(
    ("params", "loc", "type_"),
    [
        ({"status": "done"}, ["query", "status"], "literal_error"),
        ({"limit": "0"}, ["query", "limit"], "greater_than_equal"),
        ({"limit": "101"}, ["query", "limit"], "less_than_equal"),
        ({"limit": "x"}, ["query", "limit"], "int_parsing"),
        ({"after": "msg_nothere000000000000000000"}, ["query", "after"], "value_error"),
        ({"order": "up"}, ["query", "order"], "literal_error"),
        ({"sort": "asc"}, ["query", "sort"], "extra_forbidden"),
    ],
)
def test_deliveries_list_refuses_bad_query(
    tenant: Tenant, params: dict[str, str], loc: list[str], type_: str
) -> None:
    response = tenant.request("GET", "/v1/webhook_deliveries", params=params)
    assert query_error(response) == (loc, type_)


# -- a deployment of its own: a worker killed between attempts -------------


def test_worker_killed_between_attempts_still_delivers(servers: Servers, logs_dir: Path) -> None:
    # The receiver is down at first: its port is chosen but nothing listens.
    hook = Receiver(free_port())
    with running_stack(servers, logs_dir, WEBHOOK_SCHEDULE="0,2,2,2,2,2,2,2,2,2") as own:
        tenant = own.new_tenant()
        tenant.create({"model": "m"}, **callback(hook.url()))
        waiting = wait_until(
            lambda: (page := deliveries(tenant)["data"]) and page[0]["attempts"] and page[0]
        )
        own.kill("worker")
        with hook:
            own.start_worker("worker2")
            found = tenant.wait_delivery(waiting["id"])
            requests = hook.requests

    assert found["status"] == "delivered"
    *failed, last = found["attempts"]
    assert failed and all(a["error"].startswith("network") for a in failed)
    assert last["status_code"] == 200
    assert len(requests) == 1 and requests[0].headers["webhook-id"] == found["id"]
    verify(tenant.webhook_secret, requests[0])


# -- a deployment without the allow-private setting: the SSRF guard ---------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://localhost:8080/hook",
        "https://224.0.0.1/hook",
    ],
)
def test_callback_url_to_a_private_address_is_refused(guarded: Local, url: str) -> None:
    tenant = guarded.new_tenant()
    response = tenant.create({"model": "m"}, **callback(url))
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["header", "callback-url"]
    assert entry["type"] == "callback_url_forbidden"
    assert entry["input"] == url


def test_callback_url_that_does_not_resolve_is_accepted(guarded: Local) -> None:
    tenant = guarded.new_tenant()
    response = tenant.create({"model": "m"}, **callback("http://nothing.invalid/hook"))
    assert response.status_code == 202
    # At delivery it is a network error, retried like any other.
    found = wait_until(
        lambda: (page := deliveries(tenant)["data"]) and page[0]["attempts"] and page[0]
    )
    assert found["attempts"][0]["error"].startswith("network")


def test_webhook_endpoint_to_a_private_address_is_refused(guarded: Local) -> None:
    tenant = guarded.new_tenant()
    response = tenant.request(
        "PUT", "/v1/webhook_endpoint", json={"url": "http://169.254.169.254/"}
    )
    assert response.status_code == 422
    (entry,) = response.json()["detail"]
    assert (entry["loc"], entry["type"]) == (["body", "url"], "callback_url_forbidden")


def test_private_address_is_refused_again_at_delivery(guarded: Local) -> None:
    with Receiver() as hook:
        # Stored without the edge's check, as a name that later resolves
        # somewhere private would be.
        tenant = guarded.new_tenant(webhook_url=hook.url())
        tenant.create({"model": "m"})
        found = wait_until(
            lambda: (
                (page := deliveries(tenant)["data"])
                and page[0]["status"] in FINAL_DELIVERY
                and page[0]
            )
        )
        assert hook.requests == []

    assert found["status"] == "failed"
    (attempt,) = found["attempts"]
    assert attempt["status_code"] is None and attempt["error"].startswith("refused")


# -- batch events ---------------------------------------------------------

BATCH = {
    "requests": [
        {"custom_id": "ok-1", "body": {"model": "m"}},
        {"custom_id": "ok-2", "body": {"model": "m"}},
        {"custom_id": "bad", "body": {"name": 5}},
    ]
}


def test_batch_completed_goes_to_the_batch_callback_without_job_events(tenant: Tenant) -> None:
    with Receiver() as hook:
        created = tenant.request("POST", "/v1/batches", json=BATCH, headers=callback(hook.url()))
        assert created.status_code == 202, created.text
        (request,) = hook.wait_for(1)
        event = verify(tenant.webhook_secret, request)

    batch = tenant.request("GET", f"/v1/batches/{created.json()['id']}").json()
    assert event["type"] == "batch.completed"
    assert event["data"] == batch
    assert batch["request_counts"] == {
        "total": 3, "completed": 2, "failed": 1, "cancelled": 0,
        "created": 2, "updated": 0, "unchanged": 0, "deleted": 0,
    }  # fmt: skip
    # Job events are flushed before the batch settles, so none can follow.
    assert [d["event_type"] for d in deliveries(tenant)["data"]] == ["batch.completed"]


def test_batch_with_job_events_sends_them_too(tenant: Tenant) -> None:
    with Receiver() as hook:
        created = tenant.request(
            "POST",
            "/v1/batches",
            params={"job_events": "true"},
            json=BATCH,
            headers=callback(hook.url()),
        )
        assert created.status_code == 202, created.text
        events = [verify(tenant.webhook_secret, r) for r in hook.wait_for(4)]

    batch_id = created.json()["id"]
    jobs = {e["data"]["custom_id"]: e for e in events if e["type"].startswith("job.")}
    assert {name: e["type"] for name, e in jobs.items()} == {
        "ok-1": "job.succeeded",
        "ok-2": "job.succeeded",
        "bad": "job.failed",
    }
    assert all(e["data"]["batch_id"] == batch_id for e in jobs.values())
    assert jobs["bad"]["data"]["result"]["status_code"] == 422
    assert [e["type"] for e in events if e["type"].startswith("batch.")] == ["batch.completed"]
    assert len(deliveries(tenant)["data"]) == 4


def test_an_apply_answered_at_the_edge_sends_its_events_too(tenant: Tenant) -> None:
    manifest = [{"custom_id": f"k{i}", "body": {"model": "m", "name": f"n{i}"}} for i in range(3)]
    first = tenant.request("POST", "/v1/batches?mode=apply", json={"requests": manifest})
    assert first.status_code == 202, first.text
    wait_until(
        lambda: (
            tenant.request("GET", f"/v1/batches/{first.json()['id']}").json()["status"]
            == "completed"
        )
    )
    with Receiver() as hook:
        again = tenant.request(
            "POST",
            "/v1/batches",
            params={"mode": "apply", "job_events": "true"},
            json={"requests": manifest},
            headers=callback(hook.url()),
        )
        assert again.status_code == 202, again.text
        # Every line unchanged: the edge answered the batch before its 202.
        assert again.json()["status"] == "completed"
        events = [verify(tenant.webhook_secret, r) for r in hook.wait_for(4)]

    jobs = {e["data"]["custom_id"]: e for e in events if e["type"].startswith("job.")}
    assert sorted(jobs) == ["k0", "k1", "k2"]
    assert {e["type"] for e in jobs.values()} == {"job.succeeded"}
    assert jobs["k1"]["data"]["result"]["body"]["name"] == "n1"
    (batch_event,) = [e for e in events if e["type"].startswith("batch.")]
    assert batch_event["type"] == "batch.completed"
    assert batch_event["data"]["request_counts"]["unchanged"] == 3
