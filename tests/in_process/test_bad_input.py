"""Bad input at the edge: each case is a clear 4xx, never a 5xx, and nothing
is stored for the tenant (no job, batch, assistant or webhook endpoint). At
the end, fuzzing: random and mangled bodies, header values and ids, and
schemathesis's stateful phase (its other phases run in test_openapi, the
worker's validation against FastAPI's in test_validation_fuzz).

Not repeated here, already in other modules: the json_invalid offsets of a
single create (test_create), a body over the limit by a megabyte, 415 for
text/plain, a 256-char Idempotency-Key, `Prefer: wait=999999` on a create,
`file://` and `ftp://` Callback-URLs (test_create); batch line errors, the
batch limits and `status[$ne]` on /v1/jobs (test_batches); private
Callback-URLs on a create, a 302 that is not followed and the endpoint's body
rules (test_webhooks, test_webhooks_urlguard).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.in_process.test_batches import finished_batch, results
from tests.local import Local
from tests.receiver import Receiver, Reply
from tests.stack import Stack, Tenant, wait_until
from tests.test_openapi import CHECKS, schemathesis
from worker.store.connection import Store

JSON = "application/json"
JSONL = "application/x-ndjson"
LIMIT = 1024 * 1024


def assert_nothing_stored(db: Store, tenant: Tenant) -> None:
    for collection in (db.jobs, db.batches, db.assistants):
        assert collection.count_documents({"tenant": tenant.name}) == 0, collection.name
    doc = db.tenants.find_one({"_id": tenant.name})
    assert doc is not None and "webhook_url" not in doc


def send(
    tenant: Tenant, method: str, path: str, data: Any, content_type: str | None, **headers: str
) -> requests.Response:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return tenant.request(method, path, data=data, headers=headers)


# -- bodies that are not acceptable JSON, on every route that takes a body ----

# How each route carries a create's body: as it is, as a line, in a document.
ROUTES = {
    "create": ("POST", "/v1/assistants", JSON, lambda body: body),
    "batch-jsonl": ("POST", "/v1/batches", JSONL, lambda body: b'{"body": ' + body + b"}\n"),
    "batch-json": ("POST", "/v1/batches", JSON, lambda b: b'{"requests": [{"body": ' + b + b"}]}"),
    "webhook-endpoint": ("PUT", "/v1/webhook_endpoint", JSON, lambda body: body),
}

NOT_JSON = {
    "invalid UTF-8 byte": b'{"model": "m\xff"}',
    "truncated UTF-8 sequence": b'{"model": "\xe2\x82"}',
    "overlong UTF-8 encoding": b'{"model": "\xc0\xaf"}',
    "UTF-8 encoded surrogate": b'{"model": "\xed\xa0\x80"}',
    "code point past U+10FFFF": b'{"model": "\xf4\x90\x80\x80"}',
    "invalid UTF-8 in a key": b'{"mo\xffdel": "m"}',
    "raw NUL in a string": b'{"model": "a\x00b"}',
    "raw NUL in a key": b'{"a\x00": "m"}',
    "raw NUL after the value": b'{"model": "m"}\x00',
    "objects nested 10,000 deep": b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    "arrays nested 65 deep": b'{"model": "m", "x": ' + b"[" * 64 + b"]" * 64 + b"}",
    "escaped lone low surrogate": b'{"model": "\\udc00"}',
    "escaped lone high surrogate": b'{"model": "\\ud800"}',
    "integer above int64": b'{"model": 9223372036854775808}',
    "integer below int64": b'{"model": -9223372036854775809}',
    "integer of 5,000 digits": b'{"model": ' + b"9" * 5000 + b"}",
    "float overflowing to infinity": b'{"model": 1e400}',
    "float overflowing to -infinity": b'{"model": -1e400}',
    "Infinity": b'{"model": Infinity}',
    "single quotes": b"{'model': 'm'}",
    "trailing garbage": b'{"model": "m"} {"model": "n"}',
}


def not_json_cases() -> Iterator[Any]:
    for route in ROUTES:
        for case in NOT_JSON:
            yield pytest.param(route, case, id=f"{route}-{case}")


@pytest.mark.parametrize(("route", "case"), list(not_json_cases()))
def test_body_that_is_not_acceptable_json_is_422_json_invalid(
    stack: Stack, db: Store, route: str, case: str
) -> None:
    tenant = stack.new_tenant()
    method, path, content_type, wrap = ROUTES[route]
    response = send(tenant, method, path, wrap(NOT_JSON[case]), content_type)
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert entry["type"] == "json_invalid"
    assert entry["loc"][0] == "body"
    assert entry["msg"] == "JSON decode error"
    assert entry["ctx"]["error"]
    assert_nothing_stored(db, tenant)


@pytest.mark.parametrize("case", list(NOT_JSON))
def test_a_json_batch_that_is_not_acceptable_json_is_answered_as_a_create_of_it(
    tenant: Tenant, case: str
) -> None:
    method, path, content_type, wrap = ROUTES["batch-json"]
    document = wrap(NOT_JSON[case])
    batch = send(tenant, method, path, document, content_type)
    create = send(tenant, "POST", "/v1/assistants", document, JSON)
    assert batch.status_code == create.status_code == 422, batch.text
    assert batch.json() == create.json()


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (b'{"model": "m\xff"}', 12),
        (b'{"model": "\xc3\xa9\xc3\xa9\xff"}', 13),  # characters, not bytes
        (b'{"model": "a\x00b"}', 12),
        (b'{"model": "m"}\x00', 14),
        (b'{"model": -1e400}', 10),
        (b'{"a": ' * 100 + b"1" + b"}" * 100, 6 * 64),
    ],
)
def test_json_invalid_of_a_create_is_located_by_character(
    tenant: Tenant, body: bytes, offset: int
) -> None:
    response = send(tenant, "POST", "/v1/assistants", body, JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", offset]


def test_json_invalid_in_a_json_batch_is_located_by_character(tenant: Tenant) -> None:
    body = b'{"requests": [{"body": {"model": "\xff"}}]}'
    response = send(tenant, "POST", "/v1/batches", body, JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", body.index(b"\xff")]


# -- what is valid, and how it is read -----------------------------------------


def test_nesting_of_exactly_64_levels_is_accepted(tenant: Tenant) -> None:
    body = b'{"model": "m", "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert send(tenant, "POST", "/v1/assistants", body, JSON).status_code == 202


def test_the_int64_range_is_kept_exactly(tenant: Tenant) -> None:
    body = b'{"model": "m", "metadata": {"a": 9223372036854775807, "b": -9223372036854775808}}'
    response = send(tenant, "POST", "/v1/assistants", body, JSON, Prefer="wait=30")
    assert response.status_code == 422  # metadata values are strings: the worker says so
    inputs = [entry["input"] for entry in response.json()["detail"]]
    assert inputs == [2**63 - 1, -(2**63)]


def test_duplicate_keys_the_last_one_wins(tenant: Tenant) -> None:
    body = b'{"model": 5, "model": "m", "name": "a", "name": "b", "metadata": {"k": "1", "k": "2"}}'
    response = send(tenant, "POST", "/v1/assistants", body, JSON, Prefer="wait=30")
    assert response.status_code == 200, response.text
    assistant = response.json()
    assert (assistant["model"], assistant["name"], assistant["metadata"]) == ("m", "b", {"k": "2"})


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (JSONL, b'{"custom_id": "a", "custom_id": "b", "body": {"model": 1, "model": "m"}}\n'),
        (JSON, b'{"requests": [{"custom_id": "a", "custom_id": "b", "body": {"model": "m"}}]}'),
    ],
)
def test_duplicate_keys_in_a_batch_request_the_last_one_wins(
    tenant: Tenant, content_type: str, data: bytes
) -> None:
    response = send(tenant, "POST", "/v1/batches", data, content_type)
    assert response.status_code == 202, response.text
    finished_batch(tenant, response.json()["id"])
    (row,) = results(tenant, response.json()["id"])
    assert (row["custom_id"], row["status_code"], row["body"]["model"]) == ("b", 200, "m")


def test_duplicate_requests_key_in_a_json_batch_the_last_one_wins(tenant: Tenant) -> None:
    data = b'{"requests": [{"body": {"model": "a"}}], "requests": [{"body": {"model": "b"}}]}'
    response = send(tenant, "POST", "/v1/batches", data, JSON)
    assert response.status_code == 202, response.text
    assert response.json()["request_counts"]["total"] == 1


@pytest.mark.parametrize("content_type", [JSONL, JSON])
def test_escaped_nul_round_trips_in_batches(tenant: Tenant, content_type: str) -> None:
    request = {"custom_id": "a\u0000b", "body": {"model": "m", "name": "\u0000"}}
    metadata = {"\u0000k": "v\u0000"}
    if content_type == JSONL:
        data = json.dumps(request).encode() + b"\n"
    else:
        data = json.dumps({"requests": [request], "metadata": metadata}).encode()
    response = send(tenant, "POST", "/v1/batches", data, content_type)
    assert response.status_code == 202, response.text
    batch = finished_batch(tenant, response.json()["id"])
    assert batch["metadata"] == ({} if content_type == JSONL else metadata)
    (row,) = results(tenant, batch["id"])
    assert row["custom_id"] == "a\u0000b"
    assert row["body"]["name"] == "\u0000"
    job = tenant.request("GET", f"/v1/jobs/{row['job_id']}").json()
    assert job["custom_id"] == "a\u0000b"


# -- sizes ---------------------------------------------------------------------


def one_byte_over(limit: int) -> bytes:
    head, tail = b'{"model": "m", "instructions": "', b'"}'
    return head + b"x" * (limit + 1 - len(head) - len(tail)) + tail


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/assistants"), ("PUT", "/v1/webhook_endpoint")]
)
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_body_of_the_limit_plus_one_byte_is_413(
    deployment: Stack, method: str, path: str, streamed: bool
) -> None:
    # Through gunicorn: a chunked body is read as the server reads it.
    tenant = deployment.new_tenant()
    body = one_byte_over(LIMIT)
    assert len(body) == LIMIT + 1
    data: Any = iter([body[: LIMIT // 2], body[LIMIT // 2 :]]) if streamed else body
    response = send(tenant, method, path, data, JSON)
    assert response.status_code == 413, response.text
    assert_nothing_stored(deployment.db, tenant)


# -- content types ---------------------------------------------------------------

BODY_ROUTES = [("POST", "/v1/assistants"), ("POST", "/v1/batches"), ("PUT", "/v1/webhook_endpoint")]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/octet-stream",
        "application/json-patch+json",
        "application/jsonx",
        "",
    ],
)
def test_wrong_content_type_is_415(
    stack: Stack, db: Store, method: str, path: str, content_type: str | None
) -> None:
    tenant = stack.new_tenant()
    response = send(tenant, method, path, b'{"url": "http://x/", "model": "m"}', content_type)
    assert response.status_code == 415, response.text
    assert_nothing_stored(db, tenant)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_other_case_is_json(tenant: Tenant, content_type: str) -> None:
    assert (
        send(tenant, "POST", "/v1/assistants", b'{"model": "m"}', content_type).status_code == 202
    )


# -- headers and the request line ------------------------------------------------


def raw_request(
    stack: Stack, tenant: Tenant, method: str, target: str, headers: dict[str, str]
) -> int:
    """Send a request line and headers exactly as given: no client tidies them."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.putheader("Authorization", f"Bearer {tenant.api_key}")
        for name, value in headers.items():
            connection.putheader(name, value)
        body = b'{"model": "m"}' if method != "GET" else b""
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v1/assistants", {"Content-Type": JSON, "X-Filler": "x" * 16384}),
        ("/v1/assistants", {"Content-Type": JSON, "Idempotency-Key": "k" * 16384}),
        ("/v1/assistants", {"Content-Type": JSON, **{f"X-H{i}": "v" for i in range(200)}}),
        ("/v1/assistants?" + "a" * 16384, {"Content-Type": JSON}),
        ("/v1/batches", {"Content-Type": JSONL, "Callback-URL": "http://x/" + "a" * 16384}),
    ],
    ids=["16k-header-value", "16k-idempotency-key", "200-headers", "16k-url", "16k-callback"],
)
def test_oversized_header_or_request_line_is_a_4xx(
    deployment: Stack, target: str, headers: dict[str, str]
) -> None:
    tenant = deployment.new_tenant()
    status = raw_request(deployment, tenant, "POST", target, headers)
    assert 400 <= status < 500, status
    assert_nothing_stored(deployment.db, tenant)


def test_oversized_authorization_is_a_4xx(deployment: Stack) -> None:
    response = requests.post(
        deployment.url + "/v1/assistants",
        json={"model": "m"},
        headers={"Authorization": "Bearer " + "k" * 16384},
        timeout=30,
    )
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/assistants"), ("POST", "/v1/batches")])
@pytest.mark.parametrize(
    ("key", "kind"),
    [("", "string_too_short"), ("k" * 256, "string_too_long"), ("k" * 8000, "string_too_long")],
    ids=["empty", "256", "8000"],
)
def test_bad_idempotency_key_is_422_at_the_header(
    stack: Stack, db: Store, method: str, path: str, key: str, kind: str
) -> None:
    tenant = stack.new_tenant()
    data = b'{"body": {"model": "m"}}\n' if path == "/v1/batches" else b'{"model": "m"}'
    content_type = JSONL if path == "/v1/batches" else JSON
    response = send(tenant, method, path, data, content_type, **{"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert (entry["loc"], entry["type"]) == (["header", "idempotency-key"], kind)
    assert_nothing_stored(db, tenant)


# Refused whatever the allow-private setting says (the test deployments allow it).
ALWAYS_REFUSED = {
    "file:///etc/passwd": "url_scheme",
    "gopher://example.com/": "url_scheme",
    "javascript:alert(1)": "url_scheme",
    "data:text/plain,x": "url_scheme",
    "http://user:secret@example.com/": "url_parsing",
    "http://[::1": "url_parsing",
    "//example.com/hook": "url_parsing",
    "http://example.com/" + "a" * 2100: "url_too_long",
}


@pytest.mark.parametrize(("url", "kind"), ALWAYS_REFUSED.items(), ids=list(ALWAYS_REFUSED))
def test_unusable_callback_urls_are_422_on_batches_and_the_endpoint(
    stack: Stack, db: Store, url: str, kind: str
) -> None:
    tenant = stack.new_tenant()
    batch = send(tenant, "POST", "/v1/batches", b'{"body": {}}\n', JSONL, **{"Callback-URL": url})
    assert batch.status_code == 422, batch.text
    (entry,) = batch.json()["detail"]
    assert (entry["loc"], entry["type"]) == (["header", "callback-url"], kind)
    endpoint = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": url})
    assert endpoint.status_code == 422, endpoint.text
    (entry,) = endpoint.json()["detail"]
    assert (entry["loc"], entry["type"]) == (["body", "url"], kind)
    assert_nothing_stored(db, tenant)


def test_control_character_in_an_endpoint_url_is_422(stack: Stack, db: Store) -> None:
    tenant = stack.new_tenant()
    for url in (
        "http://example.com/a\u0000b",
        "http://example.com/\u007f",
        "http://exa\tmple.com/",
    ):
        response = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": url})
        assert response.status_code == 422, url
        assert response.json()["detail"][0]["type"] == "url_parsing"
    assert_nothing_stored(db, tenant)


def test_non_ascii_in_a_callback_url_is_delivered_percent_encoded(tenant: Tenant) -> None:
    with Receiver() as hook:
        put = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": hook.url("/ü?q=é")})
        assert put.status_code == 200, put.text
        tenant.create({"model": "m"})
        # A header is Latin-1 on the wire: the edge reads it as such.
        tenant.create({"model": "m"}, **{"Callback-URL": hook.url("/caf\u00e9")})
        paths = sorted(request.path for request in hook.wait_for(2))
    assert paths == ["/%C3%BC?q=%C3%A9", "/caf%C3%A9"]


def test_a_utf8_callback_url_with_a_non_ascii_host_and_path_is_delivered(
    tenant: Tenant,
) -> None:
    """Header octets that are valid UTF-8 are read as UTF-8, not as Latin-1
    mojibake; the host goes out in its IDNA form (full-width "localhost" is
    "localhost"), the path percent-encoded."""
    host = "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"  # full-width
    with Receiver() as hook:
        url = f"http://{host}:{hook.port}/stra\u00dfe/\u00fc?q=\u00e9"
        created = tenant.request(
            "POST", "/v1/assistants", json={"model": "m"}, headers={"Callback-URL": url.encode()}
        )
        assert created.status_code == 202, created.text
        assert created.json()["callback_url"] == url
        (request,) = hook.wait_for(1)
    assert request.path == "/stra%C3%9Fe/%C3%BC?q=%C3%A9"
    assert request.headers["host"] == f"localhost:{hook.port}"
    job = tenant.request("GET", created.headers["Location"]).json()
    assert job["callback_url"] == url


@pytest.mark.parametrize("host", ["a..b.example", "x" * 64 + ".example", "\u00fc" * 60 + ".de"])
def test_a_callback_url_whose_host_cannot_be_encoded_is_422_at_submission(
    stack: Stack, db: Store, host: str
) -> None:
    tenant = stack.new_tenant()
    url = f"http://{host}/hook"
    header = {"Callback-URL": url.encode()}
    for response in (
        tenant.request("POST", "/v1/assistants", json={"model": "m"}, headers=header),
        tenant.request(
            "POST", "/v1/batches", data=b'{"body": {}}\n', headers={**header, "Content-Type": JSONL}
        ),
        tenant.request("PUT", "/v1/webhook_endpoint", json={"url": url}),
    ):
        assert response.status_code == 422, response.text
        (entry,) = response.json()["detail"]
        assert entry["type"] == "url_parsing"
        assert entry["loc"][-1] in ("callback-url", "url")
    assert_nothing_stored(db, tenant)


def test_overlong_request_id_is_replaced(tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, **{"X-Request-ID": "r" * 8000})
    assert response.status_code == 202
    assert response.headers["X-Request-ID"].startswith("req_")


def test_prefer_wait_above_60_on_a_job_is_taken_as_60(tenant: Tenant) -> None:
    job = tenant.create({"model": "m"}, Prefer="wait=30").headers["Location"]
    response = tenant.request("GET", job, headers={"Prefer": "wait=999999"})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=60"


@pytest.mark.parametrize(
    ("prefer", "applied"),
    [
        ("wait=5, wait=10", "wait=5"),  # RFC 7240: the first instance counts
        ("respond-async, wait=7; x=y, WAIT=20", "wait=7"),
        ("wait=-1", "wait=0"),  # a negative wait is no wait
    ],
)
def test_prefer_wait_on_a_job_the_first_instance_counts(
    tenant: Tenant, prefer: str, applied: str
) -> None:
    job = tenant.create({"model": "m"}, Prefer="wait=30").headers["Location"]
    response = tenant.request("GET", job, headers={"Prefer": prefer})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == applied


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=abc",
        "wait=-5",
        "wait=",
        "wait=" + "9" * 5000,
        "wait=1e9",
        "wait=+5",
        "wait=1_0",
        "wait=\u00b2",  # a digit to str.isdigit, not to RFC 7240
        "wait",
        ";;,,=",
    ],
)
def test_malformed_prefer_is_not_an_error(tenant: Tenant, prefer: str) -> None:
    response = tenant.create({"model": "m"}, Prefer=prefer)
    assert response.status_code in (200, 202), response.text


# -- ids in paths, operators in query strings --------------------------------------

ID_ROUTES = [
    ("GET", "/v1/assistants/{}"),
    ("DELETE", "/v1/assistants/{}"),
    ("GET", "/v1/jobs/{}"),
    ("GET", "/v1/batches/{}"),
    ("POST", "/v1/batches/{}/cancel"),
    ("GET", "/v1/batches/{}/results"),
    ("GET", "/v1/webhook_deliveries/{}"),
    ("POST", "/v1/webhook_deliveries/{}/retry"),
]
ODD_IDS = [
    "$ne",
    "$where",
    quote('{"$ne": null}'),
    quote('{"$gt": ""}'),
    "..",
    "%2e%2e",
    "a.b",
    "%00",
    "%ff",
    "%c0%af",
    "%2F0",  # a slash: never merged away into a redirect to another id
    quote("ü"),
    "null",
    "x" * 3000,
]


@pytest.fixture(scope="module")
def owner(deployment: Stack) -> tuple[Tenant, str]:
    """A tenant with one assistant, which no odd id may reach."""
    tenant = deployment.new_tenant()
    response = tenant.create({"model": "m"}, Prefer="wait=30")
    assert response.status_code == 200
    return tenant, response.json()["id"]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
def test_odd_ids_in_the_path_are_404(
    deployment: Stack, owner: tuple[Tenant, str], method: str, route: str
) -> None:
    tenant, assistant = owner
    for odd in ODD_IDS:
        status = raw_request(deployment, tenant, method, route.format(odd), {})
        assert status == 404, (route, odd, status)
    assert tenant.request("GET", f"/v1/assistants/{assistant}").status_code == 200


LIST_ROUTES = {
    "/v1/assistants": ("limit", "order", "after", "before"),
    "/v1/jobs": ("batch_id", "status", "limit", "after"),
    "/v1/batches": ("limit", "after"),
    "/v1/webhook_deliveries": ("status", "limit", "after"),
    "/v1/batches/{}/results": ("status",),
}


@pytest.mark.parametrize("route", LIST_ROUTES)
def test_operator_shaped_query_names_are_422(owner: tuple[Tenant, str], route: str) -> None:
    tenant, _ = owner
    batch = tenant.request(
        "POST", "/v1/batches", data=b'{"body": {}}\n', headers={"Content-Type": JSONL}
    ).json()["id"]
    path = route.format(batch)
    for name in LIST_ROUTES[route]:
        for query in (f"{name}[$ne]=x", f"{name}[$gt]=", f"{name}.$ne=x", f"{name}=1&{name}=2"):
            response = tenant.request("GET", f"{path}?{query}")
            assert response.status_code == 422, (path, query, response.text)
            (entry,) = response.json()["detail"]
            assert entry["loc"][0] == "query"


# -- redirects -----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_a_redirecting_callback_is_not_followed(tenant: Tenant, status: int) -> None:
    with Receiver() as target, Receiver() as hook:
        hook.then(Reply(status, {"Location": target.url()}))
        tenant.create({"model": "m"}, **{"Callback-URL": hook.url()})
        msg_id = hook.wait_for(1)[0].headers["webhook-id"]
        found = wait_until(
            lambda: (
                (d := tenant.request("GET", f"/v1/webhook_deliveries/{msg_id}").json())["status"]
                == "failed"
                and d
            )
        )
        assert target.requests == []
        assert len(hook.requests) == 1
    assert [attempt["status_code"] for attempt in found["attempts"]] == [status]


# -- a deployment that refuses private addresses ---------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[::1]/hook", "http://[fd00::1]:8080/"],
)
def test_private_callback_urls_are_422_on_batches_and_the_endpoint(
    guarded: Local, url: str
) -> None:
    tenant = guarded.new_tenant()
    batch = send(tenant, "POST", "/v1/batches", b'{"body": {}}\n', JSONL, **{"Callback-URL": url})
    assert batch.status_code == 422, batch.text
    assert batch.json()["detail"][0]["type"] == "callback_url_forbidden"
    endpoint = tenant.request("PUT", "/v1/webhook_endpoint", json={"url": url})
    assert endpoint.status_code == 422, endpoint.text
    assert endpoint.json()["detail"][0]["type"] == "callback_url_forbidden"
    store = guarded.db
    assert_nothing_stored(store, tenant)


# -- fuzzing: random bytes and mangled JSON never make a 5xx -----------------------

SEEDS = [
    b'{"model": "gpt-4", "name": "n", "tools": [{"type": "function", "function": {"name": "f"}}]}',
    b'{"custom_id": "a", "body": {"model": "m", "metadata": {"k": "v"}}}\n{"body": {}}\n',
    b'{"requests": [{"custom_id": "a", "body": {"model": "m"}}], "metadata": {"k": "v"}}',
    b'{"url": "http://127.0.0.1:9/hook"}',
]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid document with bytes put in, cut out or replaced here and there."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.binary(min_size=0, max_size=4) | st.sampled_from([b"\\u", b"[", b"{"]))
        cut = draw(st.integers(0, 3))
        data[at : at + cut] = what
    return bytes(data)


BODIES = st.binary(max_size=300) | mangled()
TARGETS = [
    ("POST", "/v1/assistants", JSON),
    ("POST", "/v1/batches", JSONL),
    ("POST", "/v1/batches", JSON),
    ("PUT", "/v1/webhook_endpoint", JSON),
]


@pytest.fixture(scope="module")
def fuzzed(stack: Stack) -> Tenant:
    return stack.new_tenant()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(TARGETS), body=BODIES)
def test_random_and_mangled_bodies_are_never_a_5xx(
    fuzzed: Tenant, target: tuple[str, str, str], body: bytes
) -> None:
    method, path, content_type = target
    response = send(fuzzed, method, path, body, content_type)
    assert response.status_code in (200, 202, 413, 415, 422), (response.status_code, body[:200])
    if response.status_code >= 400:
        assert "detail" in response.json()


HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)


@settings(max_examples=60, deadline=None)
@given(
    headers=st.fixed_dictionaries(
        {},
        optional={
            "Idempotency-Key": HEADER_TEXT,
            "Callback-URL": HEADER_TEXT | st.builds(lambda s: "http://" + s, HEADER_TEXT),
            "Prefer": HEADER_TEXT | st.builds(lambda s: "wait=" + s, HEADER_TEXT),
            "X-Request-ID": HEADER_TEXT,
        },
    )
)
def test_random_header_values_are_never_a_5xx(fuzzed: Tenant, headers: dict[str, str]) -> None:
    if "Prefer" in headers:
        headers["Prefer"] = headers["Prefer"].replace("wait", "w")  # no long holds
    # HTTP drops whitespace before a field value, and requests refuses to send it.
    encoded = {name: value.lstrip(" \t").encode("latin-1") for name, value in headers.items()}
    response = fuzzed.request(
        "POST",
        "/v1/assistants",
        data=b'{"model": "m"}',
        headers={"Content-Type": JSON, **encoded},
    )
    assert response.status_code in (200, 202, 409, 422), (response.status_code, headers)


@settings(max_examples=60, deadline=None)
@given(ident=st.text(min_size=1, max_size=40), route=st.sampled_from(ID_ROUTES))
def test_random_ids_in_the_path_are_never_a_5xx(
    fuzzed: Tenant, ident: str, route: tuple[str, str]
) -> None:
    method, path = route
    response = fuzzed.request(method, path.format(quote(ident, safe="")))
    assert response.status_code in (404, 405), (response.status_code, ident)


def test_sequences_of_calls_keep_to_the_document(guarded_deployment: Stack, tmp_path: Path) -> None:
    """Schemathesis's stateful phase: calls chained by the links it infers from
    Location headers (create then read, delete then read again): no 5xx, every
    answer as documented, a deleted assistant gone. The deployment refuses
    private callback URLs, so generated ones cost it little."""
    tenant = guarded_deployment.new_tenant()
    run = schemathesis(
        guarded_deployment,
        tenant,
        tmp_path,
        (*CHECKS, "use_after_free", "ensure_resource_availability"),
        "--phases",
        "stateful",
        "--max-examples",
        "80",
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " passed" in run.stdout and " 0 passed" not in run.stdout
