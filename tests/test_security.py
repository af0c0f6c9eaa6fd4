"""Security: API keys kept only as hashes, tenants isolated on every route, no
secret in any log, and no client input read by MongoDB as an operator.

Around it, already elsewhere: a revoked key and an unknown key are 401
(test_create), the SSRF guard (test_webhooks, test_webhooks_urlguard), the
API key and webhook secret absent from the shared deployment's logs
(test_logs).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests

from tests.receiver import Receiver, Reply
from tests.stack import Stack, Tenant, wait_until
from worker.settings import Settings
from worker.store.connection import Store

JSONL = {"Content-Type": "application/x-ndjson"}


def cli(stack: Stack, *args: str) -> Any:
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(run.stdout)


def as_tenant(stack: Stack, key: str) -> Tenant:
    return Tenant(stack, "?", key, "")


def bearer(stack: Stack, header: str) -> int:
    response = requests.get(stack.url + "/v1/models", headers={"Authorization": header}, timeout=30)
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    return response.status_code


# -- API keys --------------------------------------------------------------


def everything_stored(store: Store, redis_url: str, prefix: str) -> bytes:
    """Every document of the deployment's database and every value under its Redis prefix."""
    from bson import encode

    dump = bytearray()
    for name in store.db.list_collection_names():
        for doc in store.db[name].find():
            dump += encode(doc)
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{prefix}:*"):
            dump += key
            kind = client.type(key)
            if kind == b"string":
                dump += client.get(key) or b""
            elif kind == b"list":
                dump += b"".join(client.lrange(key, 0, -1))
            elif kind == b"hash":
                dump += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"zset":
                dump += b"".join(client.zrange(key, 0, -1))
            elif kind == b"set":
                dump += b"".join(client.smembers(key))
    finally:
        client.close()
    return bytes(dump)


def test_keys_are_stored_only_as_hashes(stack: Stack) -> None:
    created = cli(stack, "create", "--tenant", "hashed-" + uuid.uuid4().hex[:8])
    key = created["api_key"]
    assert key.startswith("aik_") and len(key) >= 40
    client = as_tenant(stack, key)
    # Use the key everywhere it may go: creates, a batch, a wait, a bad request.
    assert client.create({"model": "m", "name": "n"}, Prefer="wait=30").status_code == 200
    assert client.create({"model": "m"}, **{"Idempotency-Key": "k1"}).status_code == 202
    batch = client.request("POST", "/v1/batches", data=b'{"body": {}}\n', headers=JSONL)
    assert batch.status_code == 202
    assert client.request("GET", "/v1/assistants?limit=0").status_code == 422

    store = stack.db
    (doc,) = store.api_keys.find({"tenant": created["tenant"]})
    assert doc["_id"] == hashlib.sha256(key.encode()).hexdigest()
    assert set(doc) == {"_id", "tenant", "created_at", "revoked_at"}
    dump = everything_stored(store, stack.servers.redis_url, stack.name)
    secret = key.removeprefix("aik_").encode()
    assert secret not in dump
    assert secret[:16] not in dump and secret[-16:] not in dump


def test_a_key_one_character_off_is_401(stack: Stack) -> None:
    key = stack.new_tenant().api_key
    assert bearer(stack, f"Bearer {key}") == 200
    body = key.removeprefix("aik_")
    near = {
        "first changed": "aik_" + chr(ord(body[0]) ^ 1) + body[1:],
        "middle changed": key[:20] + chr(ord(key[20]) ^ 1) + key[21:],
        "last changed": key[:-1] + chr(ord(key[-1]) ^ 1),
        "one short": key[:-1],
        "one more": key + "A",
        "upper case": key.upper(),
        "prefix only": "aik_",
        "the stored hash": hashlib.sha256(key.encode()).hexdigest(),
        "prefix dropped": body,
    }
    for name, value in near.items():
        assert value != key
        assert bearer(stack, f"Bearer {value}") == 401, name
    for header in (f"Basic {key}", f"Token {key}", key, f"Bearer{key}", f"Bearer {key},x"):
        assert bearer(stack, header) == 401, header


def test_a_key_revoked_with_the_cli_is_401_and_stays_stored_as_a_hash(stack: Stack) -> None:
    created = cli(stack, "create", "--tenant", "revoked-" + uuid.uuid4().hex[:8])
    key = created["api_key"]
    assert bearer(stack, f"Bearer {key}") == 200
    assert cli(stack, "revoke", key) == {"revoked": True}
    # Edges trust a checked key for AUTH_CACHE_SECONDS (1 s here).
    wait_until(lambda: bearer(stack, f"Bearer {key}") == 401, timeout=5)
    store = stack.db
    (doc,) = store.api_keys.find({"tenant": created["tenant"]})
    assert doc["revoked_at"] is not None
    assert doc["_id"] == hashlib.sha256(key.encode()).hexdigest()


# -- tenant isolation on every route ---------------------------------------------


@dataclass
class Owned:
    """What one tenant made: an id of every kind, a webhook endpoint, a secret."""

    tenant: Tenant
    ids: dict[str, str]
    endpoint: str

    @property
    def markers(self) -> list[str]:
        """Strings that must never appear in another tenant's answer."""
        return [*self.ids.values(), self.endpoint, self.tenant.name, self.tenant.webhook_secret]


@pytest.fixture(scope="module")
def owned(stack: Stack) -> Iterator[Owned]:
    tenant = stack.new_tenant()
    with Receiver() as hook:
        hook.then(Reply(410))  # the delivery fails: another tenant's retry would resend it
        created = tenant.create({"model": "m"}, Prefer="wait=30", **{"Callback-URL": hook.url()})
        assert created.status_code == 200, created.text
        delivery = hook.wait_for(1)[0].headers["webhook-id"]
    batch = tenant.request("POST", "/v1/batches", data=b'{"body": {"model": "m"}}\n', headers=JSONL)
    assert batch.status_code == 202
    endpoint = "http://127.0.0.1:9/owner-" + uuid.uuid4().hex
    assert tenant.request("PUT", "/v1/webhook_endpoint", json={"url": endpoint}).status_code == 200
    ids = {
        "assistant_id": created.json()["id"],
        "job_id": created.headers["Location"].rsplit("/", 1)[1],
        "batch_id": batch.json()["id"],
        "delivery_id": delivery,
    }
    wait_until(
        lambda: (
            tenant.request("GET", f"/v1/webhook_deliveries/{delivery}").json()["status"] == "failed"
        )
    )
    yield Owned(tenant, ids, endpoint)


def state(owned: Owned) -> dict[str, Any]:
    """What the owner sees of everything it made, and its signing secrets."""
    tenant, ids = owned.tenant, owned.ids
    seen = {
        "assistant": tenant.request("GET", f"/v1/assistants/{ids['assistant_id']}").json(),
        "job": tenant.request("GET", f"/v1/jobs/{ids['job_id']}").json(),
        "delivery": tenant.request("GET", f"/v1/webhook_deliveries/{ids['delivery_id']}").json(),
        # Its health is the system's to change (a delivery to it may fail meanwhile).
        "endpoint": tenant.request("GET", "/v1/webhook_endpoint").json()["url"],
    }
    batch = tenant.request("GET", f"/v1/batches/{ids['batch_id']}").json()
    seen["batch"] = (batch["id"], batch["cancelling_at"], batch["cancelled_at"])  # not cancelled
    store = tenant.stack.db
    doc = store.tenants.find_one({"_id": tenant.name})
    assert doc is not None
    seen["secrets"] = doc["secrets"]
    return seen


def v1_routes() -> list[tuple[str, set[str]]]:
    """Every /v1 path of the app and the methods it takes (over all its rules)."""
    from api.app import create_app

    app = create_app(Settings())
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            routes.setdefault(rule.rule, set()).update(rule.methods or ())
    return sorted(routes.items())


def test_the_walk_below_knows_every_id_a_route_takes(owned: Owned) -> None:
    names = {name for rule, _ in v1_routes() for name in re.findall(r"<(?:\w+:)?(\w+)>", rule)}
    assert names <= set(owned.ids), "teach the isolation walk the ids of a new route"


def test_every_route_answers_another_tenants_ids_as_missing(stack: Stack, owned: Owned) -> None:
    """Every /v1 route, every method, as another tenant: an id of the owner's is a
    404 exactly as a missing one; routes without ids answer with none of its data."""
    other = stack.new_tenant()
    before = state(owned)
    walked = 0
    for rule, methods in v1_routes():
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: owned.ids[m.group(1)], rule)
        takes_id = path != rule
        for method in ("GET", "POST", "PUT", "DELETE"):
            kwargs: dict[str, Any] = {}
            if method == "PUT":
                kwargs["json"] = {"url": "http://127.0.0.1:9/other"}
            elif method == "POST" and rule == "/v1/batches":
                kwargs = {"data": b'{"body": {"model": "m"}}\n', "headers": JSONL}
            elif method == "POST":
                kwargs["json"] = {"model": "m"}
            response = other.request(method, path, **kwargs)
            walked += 1
            assert response.status_code < 500, (method, path, response.text)
            if method not in methods:
                assert response.status_code == 405, (method, path)
            elif takes_id:
                assert response.status_code == 404, (method, path, response.text)
            for marker in owned.markers:
                assert marker not in response.text, (method, path, marker)
    assert walked >= 4 * 10
    assert state(owned) == before


@pytest.mark.parametrize(
    ("path", "param", "name"),
    [
        ("/v1/assistants", "after", "assistant_id"),
        ("/v1/assistants", "before", "assistant_id"),
        ("/v1/jobs", "after", "job_id"),
        ("/v1/jobs", "batch_id", "batch_id"),
        ("/v1/batches", "after", "batch_id"),
        ("/v1/webhook_deliveries", "after", "delivery_id"),
    ],
)
def test_another_tenants_ids_in_list_queries_find_nothing(
    stack: Stack, owned: Owned, path: str, param: str, name: str
) -> None:
    other = stack.new_tenant()
    other.create({"model": "m"}, Prefer="wait=30")
    response = other.request("GET", path, params={param: owned.ids[name]})
    if param == "batch_id":
        assert response.status_code == 200
        assert response.json()["data"] == []
    else:  # an unknown cursor, exactly as a missing id
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", param]
    # The 422 names the cursor it was given; nothing else of the owner's.
    for marker in owned.markers:
        if marker != owned.ids[name]:
            assert marker not in response.text


# -- no operator injection ----------------------------------------------------------

OPERATORS = ['{"$ne": null}', '{"$gt": ""}', '{"$regex": ".*"}', '{"$exists": true}', "$where"]


def test_operators_in_ids_and_query_values_match_nothing(stack: Stack, owned: Owned) -> None:
    other = stack.new_tenant()
    mine = other.create({"model": "m"}, Prefer="wait=30")
    assert mine.status_code == 200
    batch = other.request("POST", "/v1/batches", data=b'{"body": {"model": "m"}}\n', headers=JSONL)
    assert batch.status_code == 202
    for operator in OPERATORS:
        for route in (
            "/v1/assistants/{}",
            "/v1/jobs/{}",
            "/v1/batches/{}",
            "/v1/batches/{}/results",
            "/v1/webhook_deliveries/{}",
        ):
            response = other.request("GET", route.format(quote(operator, safe="")))
            assert response.status_code == 404, (route, operator)
        assert other.request("DELETE", f"/v1/assistants/{quote(operator)}").status_code == 404
        listed = other.request("GET", "/v1/jobs", params={"batch_id": operator})
        assert listed.status_code == 200 and listed.json()["data"] == [], operator
        for path, param in (
            ("/v1/assistants", "after"),
            ("/v1/assistants", "before"),
            ("/v1/jobs", "after"),
            ("/v1/batches", "after"),
            ("/v1/webhook_deliveries", "after"),
            ("/v1/jobs", "status"),
            ("/v1/webhook_deliveries", "status"),
        ):
            response = other.request("GET", path, params={param: operator})
            assert response.status_code == 422, (path, param, operator)
    # Nothing was deleted or reached: the other tenant's assistant is still there.
    assert other.request("GET", f"/v1/assistants/{mine.json()['id']}").status_code == 200
    assert owned.tenant.request("GET", f"/v1/assistants/{owned.ids['assistant_id']}").ok


@pytest.mark.parametrize(
    "body",
    [
        {"url": {"$ne": None}},
        {"url": {"$gt": ""}},
        {"url": ["http://127.0.0.1:9/"]},
        {"$set": {"webhook_url": "http://127.0.0.1:9/x"}},
        {"url": "http://127.0.0.1:9/", "$set": {"tenant": "x"}},
    ],
)
def test_operators_in_a_webhook_endpoint_body_are_422(
    stack: Stack, owned: Owned, body: dict[str, Any]
) -> None:
    other = stack.new_tenant()
    response = other.request("PUT", "/v1/webhook_endpoint", json=body)
    assert response.status_code == 422, response.text
    assert other.request("GET", "/v1/webhook_endpoint").status_code == 404
    assert owned.tenant.request("GET", "/v1/webhook_endpoint").json()["url"] == owned.endpoint


def test_a_body_cannot_choose_its_tenant_or_ids(stack: Stack, owned: Owned) -> None:
    other = stack.new_tenant()
    store = stack.db
    owners = store.assistants.count_documents({"tenant": owned.tenant.name})
    body = {
        "model": "m",
        "tenant": owned.tenant.name,
        "_id": {"$oid": "0" * 24},
        "id": owned.ids["assistant_id"],
        "job_id": owned.ids["job_id"],
    }
    response = other.create(body, Prefer="wait=30")
    assert response.status_code == 422
    assert {entry["type"] for entry in response.json()["detail"]} == {"extra_forbidden"}
    lines = [
        {"custom_id": {"$ne": None}, "body": {"model": "m"}},
        {"custom_id": "a", "body": {"model": "m"}, "tenant": owned.tenant.name},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    batch = other.request("POST", "/v1/batches", data=data, headers=JSONL)
    assert batch.status_code == 422
    assert [entry["type"] for entry in batch.json()["detail"]] == [
        "string_type",
        "extra_forbidden",
    ]
    store = stack.db
    assert store.assistants.count_documents({"tenant": other.name}) == 0
    assert store.assistants.count_documents({"tenant": owned.tenant.name}) == owners


def test_operator_shaped_idempotency_keys_are_only_keys(stack: Stack) -> None:
    one, two = stack.new_tenant(), stack.new_tenant()
    key = {"Idempotency-Key": '{"$ne": null}'}
    first = one.create({"model": "m"}, **key)
    assert first.status_code == 202
    assert one.create({"model": "m"}, **key).json()["id"] == first.json()["id"]
    assert (
        one.create({"model": "m"}, **{"Idempotency-Key": '{"$gt": ""}'}).json()["id"]
        != (first.json()["id"])
    )
    assert two.create({"model": "m"}, **key).json()["id"] != first.json()["id"]


# -- no secret in any log -----------------------------------------------------------


def test_no_key_or_secret_reaches_any_log(stack: Stack, logs_dir: Path) -> None:
    tenant = stack.new_tenant()
    trace = "secrets-" + uuid.uuid4().hex
    headers = {"X-Request-ID": trace}
    secrets = [tenant.api_key, tenant.webhook_secret]
    with Receiver() as hook:
        tenant.create({"model": "m"}, Prefer="wait=30", **{**headers, "Callback-URL": hook.url()})
        hook.wait_for(1)
        rotated = tenant.request("POST", "/v1/webhook_secret/rotate", headers=headers)
        secrets.append(rotated.json()["secret"])
        tenant.create({"model": "m"}, **{**headers, "Callback-URL": hook.url()})
        hook.wait_for(2)
    near = tenant.api_key[:-1] + chr(ord(tenant.api_key[-1]) ^ 1)
    secrets.append(near)
    for header in (f"Bearer {near}", f"Basic {tenant.api_key}", tenant.api_key):
        assert bearer(stack, header) == 401
    # A key put where it does not belong: in the query string, in a callback URL.
    tenant.request("GET", "/v1/models", params={"api_key": tenant.api_key}, headers=headers)
    refused = tenant.create(
        {"model": "m"},
        **{**headers, "Callback-URL": f"http://user:{tenant.webhook_secret}@example.com/"},
    )
    assert refused.status_code == 422
    revoked = cli(stack, "create", "--tenant", tenant.name)["api_key"]
    cli(stack, "revoke", revoked)
    assert bearer(stack, f"Bearer {revoked}") == 401
    secrets.append(revoked)

    def logged() -> str:
        return "".join(path.read_text(errors="replace") for path in logs_dir.iterdir())

    wait_until(lambda: logged().count(trace) >= 6)
    text = logged()
    for secret in secrets:
        assert secret not in text
        assert secret.removeprefix("aik_").removeprefix("whsec_")[:20] not in text


def test_line_breaks_in_a_request_cannot_split_or_forge_a_log_line(stack: Stack) -> None:
    tenant = stack.new_tenant()
    trace = "forge-" + uuid.uuid4().hex
    forged = '\r\n\x85{"level": "ERROR", "message": "forged"}\u2028\u2029'
    path = "/v1/jobs/" + quote(forged, safe="")
    assert tenant.request("GET", path, headers={"X-Request-ID": trace}).status_code == 404
    log = stack.logs / f"{stack.name}-api.log"

    def access_line() -> str | None:
        # splitlines() breaks at every Unicode line boundary, as many viewers do.
        lines = log.read_text(encoding="utf-8").splitlines()
        return next((line for line in lines if trace in line), None)

    entry = json.loads(wait_until(access_line))
    assert entry["path"] == "/v1/jobs/" + forged
    assert not any(
        line.lstrip().startswith('{"level": "ERROR", "message": "forged"')
        for line in log.read_text(encoding="utf-8").splitlines()
    )
