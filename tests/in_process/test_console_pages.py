"""The console's pages: what each shows, and what its buttons do, through the
same functions as the API (checked by reading back through the API)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.browser.console_site import (
    JSONL,
    csrf_of,
    finished_batch,
    jsonl,
    sign_in,
)
from tests.local import NO_BULK, Local, LocalTenant, running_local
from tests.receiver import Receiver, Reply
from tests.stack import Servers, wait_until


@pytest.fixture
def console(stack: Local, tenant: LocalTenant) -> tuple[FlaskClient, str]:
    client = stack.app.test_client()
    return client, sign_in(client, tenant.api_key)


@pytest.fixture(scope="module")
def queued_only(servers: Servers) -> Iterator[Local]:
    """A deployment without a bulk worker: its batches stay in progress."""
    with running_local(servers.settings(EXPRESS_BATCH_LINES="0"), NO_BULK) as deployment:
        yield deployment


def text(client: FlaskClient, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code)
    return answer.get_data(as_text=True)


def test_batch_page_shows_progress_counts_and_failed_lines_by_field(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, _ = console
    batch = finished_batch(tenant)
    html = text(client, f"/console/batches/{batch['id']}")
    assert re.search(r'<progress max="3" value="3"', html)
    assert 'id="batch-failed">2<' in html
    # Each failed line with its 422 detail as field paths and messages.
    assert "<code>no-model</code>" in html and "<code>bad-fields</code>" in html
    assert '<code class="field">model</code>: Field required' in html
    assert '<code class="field">name</code>: Input should be a valid string' in html
    assert '<code class="field">metadata.team</code>: Input should be a valid string' in html
    assert "<code>support-bot</code>" not in html  # it succeeded
    assert f"/console/batches/{batch['id']}/results?status=failed&amp;format=input" in html
    assert 'id="retry"' in html


def test_downloads_are_the_apis_results(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, _ = console
    batch = finished_batch(tenant)
    for query in ("", "?status=failed&format=input", "?status=succeeded"):
        with client.get(f"/console/batches/{batch['id']}/results{query}") as answer:
            assert answer.status_code == 200
            assert answer.headers["Content-Disposition"].startswith("attachment; filename=")
            downloaded = answer.get_data()
        via_api = tenant.request("GET", f"/v1/batches/{batch['id']}/results{query}")
        assert downloaded == via_api.content
        if query == "?status=failed&format=input":
            failed = [json.loads(raw) for raw in downloaded.splitlines()]
            assert [line["custom_id"] for line in failed] == ["no-model", "bad-fields"]


def test_retry_makes_the_child_batch_and_shows_it(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    batch = finished_batch(tenant)
    answer = client.post(f"/console/batches/{batch['id']}/retry", data={"csrf_token": csrf})
    assert answer.status_code == 303
    child_id = answer.headers["Location"].split("/console/batches/")[1].split("?")[0]
    child = tenant.request("GET", f"/v1/batches/{child_id}").json()
    assert child["retry_of"] == batch["id"]
    assert child["request_counts"]["total"] == 2
    html = text(client, answer.headers["Location"])
    assert "Retry started" in html
    assert f'href="/console/batches/{batch["id"]}"' in html  # "Retry of" its parent


def test_retry_of_a_running_batch_says_why_not(
    queued_only: Local, console: tuple[FlaskClient, str]
) -> None:
    tenant = queued_only.new_tenant()
    client = queued_only.app.test_client()
    csrf = sign_in(client, tenant.api_key)
    made = tenant.request(
        "POST", "/v1/batches", data=jsonl([{"body": {"model": "m"}}]), headers=JSONL
    )
    batch_id = made.json()["id"]
    answer = client.post(f"/console/batches/{batch_id}/retry", data={"csrf_token": csrf})
    assert answer.status_code == 409
    assert "still in_progress" in answer.get_data(as_text=True)


def test_a_running_batch_is_refreshed_live_and_can_be_cancelled(queued_only: Local) -> None:
    tenant = queued_only.new_tenant()
    client = queued_only.app.test_client()
    csrf = sign_in(client, tenant.api_key)
    made = tenant.request(
        "POST", "/v1/batches", data=jsonl([{"body": {"model": "m"}}] * 3), headers=JSONL
    )
    batch_id = made.json()["id"]
    listing = text(client, "/console/batches")
    assert 'data-running="true"' in listing
    assert 'data-refresh="/console/batches/rows"' in listing
    rows = client.get("/console/batches/rows")
    assert rows.headers["X-Console-Running"] == "true"
    assert batch_id in rows.get_data(as_text=True)
    summary = client.get(f"/console/batches/{batch_id}/summary")
    assert summary.headers["X-Console-Running"] == "true"
    assert "in progress" in summary.get_data(as_text=True)
    page = text(client, f"/console/batches/{batch_id}")
    assert "Cancel the batch" in page and 'id="retry"' not in page
    answer = client.post(f"/console/batches/{batch_id}/cancel", data={"csrf_token": csrf})
    assert answer.status_code == 303
    status = tenant.request("GET", f"/v1/batches/{batch_id}").json()["status"]
    assert status in ("cancelling", "cancelled")


def test_a_fragment_without_a_session_is_401_not_a_redirect(stack: Local) -> None:
    answer = stack.app.test_client().get("/console/batches/rows")
    assert answer.status_code == 401


def test_jobs_are_filtered_by_status(tenant: LocalTenant, console: tuple[FlaskClient, str]) -> None:
    client, _ = console
    batch = finished_batch(tenant)
    jobs = tenant.request("GET", "/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]
    failed = {job["id"] for job in jobs if job["status"] == "failed"}
    succeeded = {job["id"] for job in jobs if job["status"] == "succeeded"}
    html = text(client, "/console/jobs?status=failed")
    shown = set(re.findall(r"<th scope=\"row\"><code>(job_[A-Za-z0-9]+)</code>", html))
    assert shown == failed
    assert '<option value="failed" selected>' in html
    html = text(client, f"/console/jobs?status=succeeded&batch_id={batch['id']}")
    assert set(re.findall(r"<th scope=\"row\"><code>(job_[A-Za-z0-9]+)</code>", html)) == succeeded
    assert client.get("/console/jobs?status=nonsense").status_code == 422


def test_deliveries_show_each_attempt_with_the_receivers_answer(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    with Receiver() as hook:
        hook.then(Reply(500, body=b"receiver is down for maintenance"))
        hook.then(*[Reply(500, body=b"still down")] * 3)
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        assert put.status_code == 200
        html = text(client, "/console/deliveries")
        assert hook.url() in html and "Send a test event" in html
        answer = client.post("/console/endpoint/test", data={"csrf_token": csrf})
        assert answer.status_code == 303
        delivery_id = answer.headers["Location"].split("/console/deliveries/")[1].split("?")[0]
        tenant.wait_delivery(delivery_id, "failed")
        html = text(client, f"/console/deliveries/{delivery_id}")
        assert html.count('answered <span class="code">500</span>') == 4
        assert "receiver is down for maintenance" in html
        assert "Send it again" in html
        listed = text(client, "/console/deliveries?status=failed")
        assert delivery_id in listed
        # Retry: the same delivery, sent again; the receiver answers 200 now.
        answer = client.post(f"/console/deliveries/{delivery_id}/retry", data={"csrf_token": csrf})
        assert answer.status_code == 303
        tenant.wait_delivery(delivery_id, "delivered")
        html = text(client, f"/console/deliveries/{delivery_id}")
        assert 'answered <span class="code">200</span>' in html
        assert "Send it again" not in html
        # Retrying a delivered one is the API's 409, shown as a page.
        again = client.post(f"/console/deliveries/{delivery_id}/retry", data={"csrf_token": csrf})
        assert again.status_code == 409


def test_recover_sends_failed_deliveries_again(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    with Receiver() as hook:
        hook.then(*[Reply(500)] * 4)
        tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        sent = tenant.request("POST", "/v1/webhook_endpoint/test").json()
        tenant.wait_delivery(sent["id"], "failed")
        answer = client.post("/console/deliveries/recover", data={"csrf_token": csrf, "hours": "1"})
        assert answer.status_code == 303
        assert "1 failed deliveries will be sent again" in text(client, answer.headers["Location"])
        tenant.wait_delivery(sent["id"], "delivered")
        bad = client.post("/console/deliveries/recover", data={"csrf_token": csrf, "hours": "x"})
        assert bad.status_code == 422


def test_a_disabled_endpoint_shows_why_and_can_be_enabled(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    with Receiver() as hook:
        hook.then(Reply(410))
        tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        tenant.request("POST", "/v1/webhook_endpoint/test")
        wait_until(
            lambda: tenant.request("GET", "/v1/webhook_endpoint").json()["status"] == "disabled"
        )
        html = text(client, "/console/deliveries")
        assert "status-disabled" in html and "410 Gone" in html
        answer = client.post("/console/endpoint/enable", data={"csrf_token": csrf})
        assert answer.status_code == 303
        assert tenant.request("GET", "/v1/webhook_endpoint").json()["status"] == "enabled"


def upload(client: FlaskClient, csrf: str, lines: list[dict[str, Any]], prune: bool = False) -> Any:
    data: dict[str, Any] = {
        "csrf_token": csrf,
        "manifest": (io.BytesIO(jsonl(lines)), "assistants.jsonl"),
    }
    if prune:
        data["prune"] = "on"
    return client.post("/console/provisioning/plan", data=data, content_type="multipart/form-data")


def test_provisioning_shows_the_plan_as_a_diff_and_applies_it(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    base = [
        {"custom_id": "kept", "body": {"model": "gpt-4o", "instructions": "Be brief."}},
        {"custom_id": "gone", "body": {"model": "gpt-4o"}},
    ]
    applied = tenant.request(
        "POST", "/v1/batches?mode=apply", data=jsonl(base), headers=JSONL
    ).json()
    wait_until(
        lambda: (
            tenant.request("GET", f"/v1/batches/{applied['id']}").json()["status"] == "completed"
        )
    )
    manifest = [
        {"custom_id": "kept", "body": {"model": "gpt-4o", "instructions": "Be brief and kind."}},
        {"custom_id": "new-bot", "body": {"model": "gpt-4o-mini"}},
        {"custom_id": "bad-bot", "body": {"name": "x"}},
    ]
    answer = upload(client, csrf, manifest, prune=True)
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    summary = re.search(r'id="plan-summary">(.*?)</p>', html, re.S)
    assert summary is not None
    assert " ".join(re.sub("<[^>]+>", "", summary.group(1)).split()) == (
        "1 to create, 1 to update, 1 to delete, 0 unchanged, 1 invalid."
    )
    assert 'class="diff-create"' in html and "<code>new-bot</code>" in html
    assert 'class="diff-update"' in html
    assert '<del>"Be brief."</del> → <ins>"Be brief and kind."</ins>' in html
    assert 'class="diff-delete"' in html and "<code>gone</code>" in html
    assert 'class="diff-invalid"' in html and "Field required" in html
    # The plan is the API's own: its digest is the dry run's ETag.
    dry = tenant.request(
        "POST",
        "/v1/batches?mode=apply&prune=true&dry_run=true",
        data=jsonl(manifest),
        headers=JSONL,
    )
    assert f'value="{dry.headers["ETag"].strip(chr(34))}"' in html
    applied_now = client.post(
        "/console/provisioning/apply",
        data={"csrf_token": csrf_of(html), "digest": dry.headers["ETag"].strip('"'), "prune": "on"},
    )
    assert applied_now.status_code == 303
    batch_id = applied_now.headers["Location"].split("/console/batches/")[1]
    # Pressed again (or from a second tab): nothing more is applied.
    twice = client.post(
        "/console/provisioning/apply",
        data={"csrf_token": csrf_of(html), "digest": dry.headers["ETag"].strip('"'), "prune": "on"},
    )
    assert twice.status_code == 410
    assert len(tenant.request("GET", "/v1/batches").json()["data"]) == 2
    done = wait_until(
        lambda: (
            (b := tenant.request("GET", f"/v1/batches/{batch_id}").json())["status"] == "completed"
            and b
        )
    )
    counts = done["request_counts"]
    assert (counts["created"], counts["updated"], counts["deleted"], counts["failed"]) == (
        1,
        1,
        1,
        1,
    )


def test_an_apply_whose_plan_changed_meanwhile_applies_nothing(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    client, csrf = console
    first = tenant.request(
        "POST",
        "/v1/batches?mode=apply",
        data=jsonl([{"custom_id": "bot", "body": {"model": "gpt-4o", "name": "One"}}]),
        headers=JSONL,
    ).json()
    wait_until(
        lambda: tenant.request("GET", f"/v1/batches/{first['id']}").json()["status"] == "completed"
    )
    answer = upload(
        client, csrf, [{"custom_id": "bot", "body": {"model": "gpt-4o", "name": "Two"}}]
    )
    html = answer.get_data(as_text=True)
    digest = re.search(r'name="digest" value="([0-9a-f]{64})"', html)
    assert digest is not None
    # Someone changes the assistant after the plan was shown.
    assistant_id = tenant.request("GET", "/v1/assistants").json()["data"][0]["id"]
    changed = tenant.request(
        "POST",
        f"/v1/assistants/{assistant_id}",
        json={"name": "Three"},
        headers={"Prefer": "wait=10"},
    )
    assert changed.status_code == 200
    batches_before = tenant.request("GET", "/v1/batches").json()["data"]
    refused = client.post(
        "/console/provisioning/apply", data={"csrf_token": csrf, "digest": digest.group(1)}
    )
    assert refused.status_code == 412
    assert "Nothing was applied" in refused.get_data(as_text=True)
    assert tenant.request("GET", "/v1/batches").json()["data"] == batches_before
    # The kept manifest was for that plan only: applying it again says to plan again.
    again = client.post(
        "/console/provisioning/apply", data={"csrf_token": csrf, "digest": digest.group(1)}
    )
    assert again.status_code == 410


def test_a_manifest_with_structural_errors_is_listed_by_line(
    console: tuple[FlaskClient, str],
) -> None:
    client, csrf = console
    data = {
        "csrf_token": csrf,
        "manifest": (
            io.BytesIO(b'{"custom_id": "a", "body": {"model": "m"}}\nnot json\n'),
            "m.jsonl",
        ),
    }
    answer = client.post(
        "/console/provisioning/plan", data=data, content_type="multipart/form-data"
    )
    assert answer.status_code == 422
    assert "line 2" in answer.get_data(as_text=True)


def test_every_page_labels_its_controls_and_heads_its_tables(
    tenant: LocalTenant, console: tuple[FlaskClient, str]
) -> None:
    """What a screen reader and a keyboard need: a language, one h1, a label for
    every field, headers for every table, buttons that say what they do."""
    client, csrf = console
    batch = finished_batch(tenant)
    with Receiver() as hook:
        tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        sent = tenant.request("POST", "/v1/webhook_endpoint/test").json()
        hook.wait_for(1)
    plan = upload(client, csrf, [{"custom_id": "a11y", "body": {"model": "gpt-4o"}}])
    pages = {
        "sign-in": stack_page(tenant),
        "batches": text(client, "/console/batches"),
        "batch": text(client, f"/console/batches/{batch['id']}"),
        "jobs": text(client, "/console/jobs"),
        "deliveries": text(client, "/console/deliveries"),
        "delivery": text(client, f"/console/deliveries/{sent['id']}"),
        "provisioning": plan.get_data(as_text=True),
    }
    for name, html in pages.items():
        assert '<html lang="en">' in html, name
        assert html.count("<h1") == 1, name
        assert 'href="#main"' in html and 'id="main"' in html, name
        fields = re.findall(r"<(?:input|select|textarea)\b[^>]*>", html)
        for field in fields:
            if 'type="hidden"' in field:
                continue
            field_id = re.search(r'\bid="([^"]+)"', field)
            assert field_id is not None, (name, field)
            assert f'<label for="{field_id.group(1)}"' in html, (name, field)
        for table in re.findall(r"<table\b.*?</table>", html, re.S):
            assert "<th" in table, name
        for button in re.findall(r"<button\b[^>]*>(.*?)</button>", html, re.S):
            assert button.strip(), name


def stack_page(tenant: LocalTenant) -> str:
    return tenant.local.app.test_client().get("/console/sign-in").get_data(as_text=True)
