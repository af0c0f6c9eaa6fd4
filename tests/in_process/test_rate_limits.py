"""Rate limits per API key: RateLimit-* on every /v1 answer, 429 with Retry-After,
checked after authentication and before everything else."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.allowances import LEASE_MAX, TAKE, Allowances
from api.limits import RateLimit
from tests.in_process.test_batches import submit
from tests.local import Local, LocalTenant, running_local
from tests.stack import Servers, Tenant

LIMIT = 3


@pytest.fixture(scope="module")
def limited(servers: Servers) -> Iterator[Local]:
    # A window of an hour: counting starts at a key's first request, so no
    # window ends inside a test.
    with running_local(servers.settings(RATE_LIMIT=f"{LIMIT}/hour")) as deployment:
        yield deployment


@pytest.fixture
def client(limited: Local) -> LocalTenant:
    return limited.new_tenant()


class Unread(io.RawIOBase):
    """A body that must not be read."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read")


def use_up(client: Tenant) -> None:
    for _ in range(LIMIT):
        assert client.request("GET", "/v1/models").status_code == 200


def test_every_v1_answer_tells_the_limit_and_what_remains(client: Tenant) -> None:
    answers = [
        client.request("GET", "/v1/models"),
        client.request("GET", "/v1/assistants/asst_missing"),
        client.create({"model": "m"}),
    ]
    assert [a.status_code for a in answers] == [200, 404, 202]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    for answer in answers:
        assert answer.headers["RateLimit-Limit"] == str(LIMIT)
        assert 0 < int(answer.headers["RateLimit-Reset"]) <= 3600
    # Retry-After on a 202 is the job's polling hint, not the limit's.
    assert answers[2].headers["Retry-After"] == "1"


def test_over_the_limit_is_429_with_retry_after(client: Tenant) -> None:
    use_up(client)
    response = client.request("GET", "/v1/models")
    assert response.status_code == 429
    assert response.json() == {"detail": f"Rate limit exceeded: {LIMIT} per 1 hour"}
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Limit"] == str(LIMIT)


def test_limits_are_per_api_key(limited: Local, client: Tenant) -> None:
    use_up(client)
    assert client.request("GET", "/v1/models").status_code == 429
    other = limited.new_tenant()
    assert other.request("GET", "/v1/models").status_code == 200


def test_401_comes_before_429_and_costs_nothing(limited: Local, client: Tenant) -> None:
    for _ in range(LIMIT + 1):
        response = limited.client().get("/v1/models", headers={"Authorization": "Bearer aik_wrong"})
        assert response.status_code == 401
        assert "RateLimit-Limit" not in response.headers
    assert client.request("GET", "/v1/models").headers["RateLimit-Remaining"] == "2"


def test_429_comes_before_415_413_and_422(limited: Local, client: Tenant) -> None:
    use_up(client)
    wrong_type = client.request(
        "POST", "/v1/assistants", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 429
    assert client.request("GET", "/v1/assistants", params={"limit": "0"}).status_code == 429
    # A body over the limit: the answer comes before the body is read.
    response = limited.client().post(
        "/v1/assistants",
        headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"},
        environ_overrides={"CONTENT_LENGTH": str(2 << 20), "wsgi.input": Unread()},
    )
    assert response.status_code == 429


def test_a_batch_costs_one_request(client: Tenant) -> None:
    lines = "".join(f'{{"body": {{"model": "m{i}"}}}}\n' for i in range(10))
    response = submit(client, lines.encode())
    assert response.status_code == 202, response.text
    assert response.headers["RateLimit-Remaining"] == str(LIMIT - 1)


def test_health_metrics_and_the_document_are_not_limited(limited: Local) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        response = limited.client().get(path)
        assert response.status_code == 200
        assert "RateLimit-Limit" not in response.headers


@pytest.mark.parametrize(
    ("text", "amount", "seconds", "said"),
    [
        ("6000/minute", 6000, 60, "6000 per 1 minute"),
        ("10 per second", 10, 1, "10 per 1 second"),
        ("100/5 minutes", 100, 300, "100 per 5 minutes"),
        (" 3/Hour ", 3, 3600, "3 per 1 hour"),
        ("1/days", 1, 86400, "1 per 1 day"),
    ],
)
def test_the_limit_is_an_amount_per_window(text: str, amount: int, seconds: int, said: str) -> None:
    assert RateLimit.parse(text) == RateLimit(amount, seconds, said)


@pytest.mark.parametrize("text", ["", "6000", "0/minute", "6000/fortnight", "-1/second", "x/hour"])
def test_a_malformed_limit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RATE_LIMIT must be like 6000/minute"):
        RateLimit.parse(text)


# Allowances: each process takes a few units of a key's window at a time.


@pytest.fixture
def valkey(servers: Servers) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.redis_url)
    yield client
    client.close()


def allowances(client: redis.Redis, amount: int, seconds: int = 3600) -> Allowances:
    def take(key: str, window_ms: int, need: int, ask: int, limit: int) -> Any:
        return client.eval(TAKE, 1, key, window_ms, need, ask, limit)

    return Allowances(take, amount, seconds)


def test_a_process_takes_units_ahead_and_counts_each_request_exactly(
    valkey: redis.Redis,
) -> None:
    key = f"rl-{uuid.uuid4().hex}"
    asked: list[tuple[int, int]] = []

    def take(key: str, window_ms: int, need: int, ask: int, limit: int) -> Any:
        asked.append((need, ask))
        return valkey.eval(TAKE, 1, key, window_ms, need, ask, limit)

    process = Allowances(take, 10_000, 3600)
    counts = [process.hit(key, 1)[0] for _ in range(100)]
    assert counts == list(range(1, 101))
    # Each ask of the window doubles the next, up to LEASE_MAX.
    assert [a for _, a in asked] == [1, 2, 4, 8, 16, 32, 32]
    held = sum(1 + a for _, a in asked) - 100
    assert int(valkey.get(key) or 0) == 100 + held
    assert 3_590_000 < valkey.pttl(key) <= 3_600_000
    # A cost larger than what is held spends it and asks Redis for the rest.
    count, ttl_ms = process.hit(key, LEASE_MAX + held)
    assert count == 100 + LEASE_MAX + held
    assert asked[-1] == (LEASE_MAX, LEASE_MAX)
    assert 3_590_000 < ttl_ms <= 3_600_000


def test_processes_sharing_a_key_never_admit_more_than_the_limit(valkey: redis.Redis) -> None:
    key = f"rl-{uuid.uuid4().hex}"
    limit = 1_000  # each process asks for 10 units at a time
    processes = [allowances(valkey, limit) for _ in range(3)]
    admitted = refused = 0
    for i in range(3 * limit):
        count, _ = processes[i % 3 if i % 7 else 0].hit(key, 1)
        if count <= limit:
            admitted += 1
        else:
            refused += 1
    assert admitted == limit
    assert refused == 2 * limit


def test_a_small_limit_is_counted_in_redis_on_every_request(valkey: redis.Redis) -> None:
    key = f"rl-{uuid.uuid4().hex}"
    first, second = allowances(valkey, 50), allowances(valkey, 50)
    assert [first.hit(key, 1)[0], second.hit(key, 1)[0], first.hit(key, 1)[0]] == [1, 2, 3]
    assert int(valkey.get(key) or 0) == 3


def test_what_is_held_ends_with_its_window(valkey: redis.Redis) -> None:
    key = f"rl-{uuid.uuid4().hex}"
    process = allowances(valkey, 200, seconds=1)  # a unit asked ahead, then 2
    assert [process.hit(key, 1)[0] for _ in range(3)] == [1, 2, 3]
    assert int(valkey.get(key) or 0) == 5  # 1 + 1, then 1 + 2
    time.sleep(1.1)
    # The window and what was held of it are gone: a new window counts anew,
    # and its first ask is one unit again.
    assert process.hit(key, 1)[0] == 1
    assert int(valkey.get(key) or 0) == 2


def test_the_edge_answers_most_requests_from_its_allowance(servers: Servers) -> None:
    with running_local(servers.settings(RATE_LIMIT="10000/hour")) as deployment:
        client = deployment.new_tenant()
        answers = [client.request("GET", "/v1/models") for _ in range(40)]
        remaining = [int(a.headers["RateLimit-Remaining"]) for a in answers]
        assert remaining == list(range(9999, 9959, -1))
        keys = deployment.rt.redis.keys(f"{deployment.settings.redis_prefix}:ratelimit:*")
        assert len(keys) == 1
        # Counted ahead: asks of 1, 2, 4, 8, 16 and 32 units beyond a request.
        assert int(deployment.rt.redis.get(keys[0]) or 0) == 6 + 63


def test_a_grant_of_a_window_that_ended_meanwhile_is_not_spent_in_the_next() -> None:
    # Two requests of one key in one process ask at once: the first's answer
    # comes from the window that was ending, the second's from the next one.
    # (Scripted answers: the interleaving cannot be forced against a server.)
    asked: list[int] = []

    def take(key: str, window_ms: int, need: int, ask: int, limit: int) -> Any:
        asked.append(need)
        if len(asked) == 1:
            second = process.hit(key, 1)  # the other request, answered first
            assert second == (1, 3_600_000)
            return [990, 5, 10]  # the old window, 5 ms left, 10 granted
        return [6, 3_600_000, 5]  # the new window, 5 granted

    process = Allowances(take, 10_000, 3600)
    assert process.hit("k", 1) == (980, 5)
    # Only the new window's grant is spent: 5 requests, then Redis again.
    assert [process.hit("k", 1)[0] for _ in range(5)] == [2, 3, 4, 5, 6]
    assert len(asked) == 2
    process.hit("k", 1)
    assert len(asked) == 3
