"""The console: sessions, CSRF, security headers, and tenancy as the API has it."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from flask.testing import FlaskClient

from tests.browser.console_site import JSONL, csrf_of, finished_batch, jsonl, sign_in
from tests.local import Local, LocalTenant, running_local
from tests.stack import Servers
from worker.store import tenants


def client_of(stack: Local) -> FlaskClient:
    return stack.app.test_client()


def test_a_page_without_a_session_goes_to_sign_in(stack: Local) -> None:
    answer = client_of(stack).get("/console/batches")
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/console/sign-in")


def test_sign_in_keeps_only_a_signed_session_id_in_the_cookie(
    stack: Local, tenant: LocalTenant
) -> None:
    client = client_of(stack)
    form = client.get("/console/sign-in").get_data(as_text=True)
    token = re.search(r'name="sign_in_token" value="([^"]+)"', form)
    assert token is not None
    answer = client.post(
        "/console/sign-in", data={"sign_in_token": token.group(1), "api_key": tenant.api_key}
    )
    assert answer.status_code == 303
    assert tenant.api_key not in answer.headers["Location"]
    cookies = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("console_session=")]
    assert len(cookies) == 1
    header = cookies[0]
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Path=/console" in header
    assert "Secure" in header  # the default: HTTPS only
    value = SimpleCookie(header)["console_session"].value
    assert tenant.api_key not in value
    # The key is not in the session record either: only its hash.
    records = [
        stack.rt.redis.get(name)
        for name in stack.rt.redis.scan_iter(f"{stack.settings.redis_prefix}:console:session:*")
    ]
    assert records
    assert all(tenant.api_key.encode() not in (record or b"") for record in records)
    assert any(tenants.hash_key(tenant.api_key).encode() in (r or b"") for r in records)
    page = client.get("/console/batches")
    assert page.status_code == 200
    assert tenant.api_key not in page.get_data(as_text=True)


def test_a_wrong_key_is_refused_and_signs_nothing_in(stack: Local) -> None:
    client = client_of(stack)
    form = client.get("/console/sign-in").get_data(as_text=True)
    token = re.search(r'name="sign_in_token" value="([^"]+)"', form)
    assert token is not None
    answer = client.post(
        "/console/sign-in", data={"sign_in_token": token.group(1), "api_key": "aik_nope"}
    )
    assert answer.status_code == 401
    assert "not valid" in answer.get_data(as_text=True)
    assert not any(h.startswith("console_session=") for h in answer.headers.getlist("Set-Cookie"))
    assert client.get("/console/batches").status_code == 303


def test_sign_in_without_its_form_token_is_refused(stack: Local, tenant: LocalTenant) -> None:
    """Another site cannot sign a browser in (to its own tenant) with a form of its own."""
    answer = client_of(stack).post(
        "/console/sign-in", data={"sign_in_token": "forged", "api_key": tenant.api_key}
    )
    assert answer.status_code == 403
    assert not any(h.startswith("console_session=") for h in answer.headers.getlist("Set-Cookie"))


def test_a_form_without_the_sessions_csrf_token_changes_nothing(
    stack: Local, tenant: LocalTenant
) -> None:
    batch = finished_batch(tenant)
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    for token in (None, "wrong"):
        data = {} if token is None else {"csrf_token": token}
        answer = client.post(f"/console/batches/{batch['id']}/retry", data=data)
        assert answer.status_code == 403
        assert "expired" in answer.get_data(as_text=True)
    listed = tenant.request("GET", "/v1/batches").json()["data"]
    assert [b["id"] for b in listed] == [batch["id"]]  # no retry was made


def test_a_form_sent_from_another_site_is_refused(stack: Local, tenant: LocalTenant) -> None:
    client = client_of(stack)
    csrf = sign_in(client, tenant.api_key)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = client.post("/console/sign-out", data={"csrf_token": csrf}, headers=headers)
        assert answer.status_code == 403
    assert client.get("/console/batches").status_code == 200  # still signed in


def test_console_pages_carry_a_strict_csp_and_no_inline_script_or_style(
    stack: Local, tenant: LocalTenant
) -> None:
    batch = finished_batch(tenant)
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    pages = [
        "/console/sign-in",
        "/console/batches",
        f"/console/batches/{batch['id']}",
        "/console/jobs",
        "/console/deliveries",
        "/console/provisioning",
    ]
    for path in pages:
        answer = client.get(path)
        assert answer.status_code == 200, path
        csp = answer.headers["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ):
            assert directive in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        html = answer.get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert " style=" not in html and "<style" not in html, path
        assert not re.search(r"\son[a-z]+=", html), path  # no inline event handlers
        assert "https://" not in html.split("<body>")[0], path  # no third-party assets
        for asset in re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html):
            with client.get(asset) as served:
                assert served.status_code == 200, asset


def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(
    stack: Local, tenant: LocalTenant
) -> None:
    client = client_of(stack)
    csrf = sign_in(client, tenant.api_key)
    cookie = client.get_cookie("console_session", path="/console")
    assert cookie is not None
    answer = client.post("/console/sign-out", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert "reason=signed_out" in answer.headers["Location"]
    copy = client_of(stack)
    copy.set_cookie("console_session", cookie.value, path="/console")
    assert copy.get("/console/batches").status_code == 303


def test_revoking_the_key_ends_its_console_session(stack: Local, tenant: LocalTenant) -> None:
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    assert client.get("/console/batches").status_code == 200
    assert tenants.revoke_key(stack.db, tenant.api_key)
    answer = client.get("/console/batches")
    assert answer.status_code == 303
    assert "reason=revoked" in answer.headers["Location"]
    # Ended, not only refused: the session record is gone.
    keys = list(stack.rt.redis.scan_iter(f"{stack.settings.redis_prefix}:console:session:*"))
    records = [stack.rt.redis.get(key) or b"" for key in keys]
    assert not any(tenants.hash_key(tenant.api_key).encode() in r for r in records)


def test_a_tampered_or_made_up_cookie_is_no_session(stack: Local, tenant: LocalTenant) -> None:
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    cookie = client.get_cookie("console_session", path="/console")
    assert cookie is not None
    session_id, _, signature = cookie.value.rpartition(".")
    for forged in (
        session_id + "." + signature[::-1],
        "x" + cookie.value,
        session_id,
        "made-up.value",
    ):
        other = client_of(stack)
        other.set_cookie("console_session", forged, path="/console")
        assert other.get("/console/batches").status_code == 303


def test_another_tenants_batch_and_delivery_are_not_found(
    stack: Local, tenant: LocalTenant, other_tenant: LocalTenant
) -> None:
    """Tenant B's session cannot see or act on tenant A's batch or delivery by id."""
    from tests.receiver import Receiver

    batch = finished_batch(tenant)
    with Receiver() as hook:
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url()})
        assert put.status_code == 200
        sent = tenant.request("POST", "/v1/webhook_endpoint/test").json()
        hook.wait_for(1)
    owner = client_of(stack)
    sign_in(owner, tenant.api_key)
    assert owner.get(f"/console/batches/{batch['id']}").status_code == 200
    assert owner.get(f"/console/deliveries/{sent['id']}").status_code == 200

    intruder = client_of(stack)
    csrf = sign_in(intruder, other_tenant.api_key)
    for path in (
        f"/console/batches/{batch['id']}",
        f"/console/batches/{batch['id']}/summary",
        f"/console/batches/{batch['id']}/results",
        f"/console/batches/{batch['id']}/results?status=failed&format=input",
        f"/console/deliveries/{sent['id']}",
    ):
        assert intruder.get(path).status_code == 404, path
    for path in (
        f"/console/batches/{batch['id']}/retry",
        f"/console/batches/{batch['id']}/cancel",
        f"/console/deliveries/{sent['id']}/retry",
    ):
        assert intruder.post(path, data={"csrf_token": csrf}).status_code == 404, path
    for path in ("/console/batches", "/console/jobs", "/console/deliveries"):
        html = intruder.get(path).get_data(as_text=True)
        assert batch["id"] not in html and sent["id"] not in html, path
    assert intruder.get(f"/console/jobs?batch_id={batch['id']}").status_code == 200
    assert (
        batch["id"]
        not in intruder.get(f"/console/jobs?batch_id={batch['id']}")
        .get_data(as_text=True)
        .split("<tbody>")[1]
    )
    # The owner's batch is as it was: no retry, no cancel.
    assert [b["id"] for b in tenant.request("GET", "/v1/batches").json()["data"]] == [batch["id"]]
    assert tenant.request("GET", f"/v1/batches/{batch['id']}").json() == batch


def test_the_console_has_no_route_to_the_api_with_a_session_alone(
    stack: Local, tenant: LocalTenant
) -> None:
    """The session cookie is scoped to /console: the /v1 routes still need the key."""
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    assert client.get("/v1/batches").status_code == 401


@pytest.mark.parametrize("path", ["/console/batches/nope", "/console/deliveries/nope"])
def test_unknown_ids_are_a_404_page(stack: Local, tenant: LocalTenant, path: str) -> None:
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    answer = client.get(path)
    assert answer.status_code == 404
    assert answer.mimetype == "text/html"
    assert "Content-Security-Policy" in answer.headers


def test_batches_are_listed_newest_first_as_the_api_lists_them(
    stack: Local, tenant: LocalTenant
) -> None:
    finished_batch(tenant)
    for _ in range(2):
        tenant.request("POST", "/v1/batches", data=jsonl([{"body": {"model": "m"}}]), headers=JSONL)
    listed = [b["id"] for b in tenant.request("GET", "/v1/batches").json()["data"]]
    assert len(listed) == 3
    client = client_of(stack)
    sign_in(client, tenant.api_key)
    html = client.get("/console/batches").get_data(as_text=True)
    shown = re.findall(r'href="/console/batches/(batch_[A-Za-z0-9]+)"', html)
    assert shown == listed
    assert csrf_of(html)


@pytest.fixture(scope="module")
def tight(servers: Servers) -> Iterator[Local]:
    """A deployment whose keys may make 5 requests a minute."""
    with running_local(servers.settings(RATE_LIMIT="5/minute")) as deployment:
        yield deployment


def test_console_pages_count_against_the_keys_rate_limit(tight: Local) -> None:
    """The console is no way around the API's limits: its pages spend the budget of
    the key the session signed in with, and what is left is the API's too."""
    tenant = tight.new_tenant()
    client = tight.app.test_client()
    sign_in(client, tenant.api_key)  # one counted page: the batches it lands on
    statuses = [client.get("/console/jobs").status_code for _ in range(5)]
    assert statuses == [200] * 4 + [429]
    limited = client.get("/console/batches")
    assert limited.status_code == 429
    assert "Too many requests" in limited.get_data(as_text=True)
    assert tenant.request("GET", "/v1/batches").status_code == 429
    other = tight.new_tenant()
    assert other.request("GET", "/v1/batches").status_code == 200


def test_a_session_made_by_one_edge_process_is_honoured_by_another(
    stack: Local, tenant: LocalTenant
) -> None:
    """The signing secret is made once and shared through Redis, so a browser may
    land on any process behind the load balancer."""
    from api.app import create_app
    from api.context import close

    client = client_of(stack)
    sign_in(client, tenant.api_key)
    cookie = client.get_cookie("console_session", path="/console")
    assert cookie is not None
    other = create_app(stack.settings)
    try:
        elsewhere = other.test_client()
        elsewhere.set_cookie("console_session", cookie.value, path="/console")
        assert elsewhere.get("/console/batches").status_code == 200
    finally:
        close(other)


def test_a_configured_secret_signs_instead_and_other_secrets_fail(
    servers: Servers, stack: Local, tenant: LocalTenant
) -> None:
    from api.app import create_app
    from api.context import close

    client = client_of(stack)
    sign_in(client, tenant.api_key)
    cookie = client.get_cookie("console_session", path="/console")
    assert cookie is not None
    other = create_app(stack.settings.model_copy(update={"console_secret": "s3cret-of-ops"}))
    try:
        elsewhere = other.test_client()
        elsewhere.set_cookie("console_session", cookie.value, path="/console")
        assert elsewhere.get("/console/batches").status_code == 303
        fresh = other.test_client()
        sign_in(fresh, tenant.api_key)
        assert fresh.get("/console/batches").status_code == 200
    finally:
        close(other)


@pytest.fixture(scope="module")
def small_forms(servers: Servers) -> Iterator[Local]:
    with running_local(servers.settings(CONSOLE_MAX_MANIFEST_BYTES="1000")) as deployment:
        yield deployment


def test_a_form_bigger_than_the_manifest_cap_is_413_and_plans_nothing(small_forms: Local) -> None:
    tenant = small_forms.new_tenant()
    client = small_forms.app.test_client()
    csrf = sign_in(client, tenant.api_key)
    big = b'{"custom_id": "a", "body": {"model": "m"}}\n' * 2000
    data = {"csrf_token": csrf, "manifest": (io.BytesIO(big), "big.jsonl")}
    answer = client.post(
        "/console/provisioning/plan", data=data, content_type="multipart/form-data"
    )
    assert answer.status_code == 413
    assert "Content-Security-Policy" in answer.headers
    assert tenant.request("GET", "/v1/batches").json()["data"] == []


def test_a_key_keeps_only_its_newest_sessions(stack: Local, tenant: LocalTenant) -> None:
    """Signing in again and again cannot fill Redis: past the cap, the oldest
    sessions of the key end."""
    from api.console.sessions import SESSIONS_PER_KEY

    clients = [client_of(stack) for _ in range(SESSIONS_PER_KEY + 2)]
    for client in clients:
        sign_in(client, tenant.api_key)
    statuses = [client.get("/console/jobs").status_code for client in clients]
    assert statuses == [303, 303] + [200] * SESSIONS_PER_KEY
    prefix = f"{stack.settings.redis_prefix}:console:session:"
    records = [stack.rt.redis.get(key) or b"" for key in stack.rt.redis.scan_iter(prefix + "*")]
    mine = [r for r in records if tenants.hash_key(tenant.api_key).encode() in r]
    assert len(mine) == SESSIONS_PER_KEY
