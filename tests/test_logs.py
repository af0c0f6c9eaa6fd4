"""Structured logs: one JSON object a line, a request followed from the edge to
the worker by its request id, and no API key or secret ever written."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.stack import Stack, Tenant, wait_until


def log_lines(stack: Stack, process: str) -> list[dict[str, Any]]:
    path = stack.logs / f"{stack.name}-{process}.log"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        lines.append(entry)
    return lines


def log_text(stack: Stack) -> str:
    return "".join(
        (stack.logs / f"{stack.name}-{process}.log").read_text(encoding="utf-8")
        for process in ("api", "worker")
    )


def test_a_request_is_followed_from_edge_to_worker_by_its_request_id(
    stack: Stack, tenant: Tenant
) -> None:
    request_id = "trace-" + uuid.uuid4().hex
    response = tenant.create({"model": "m"}, Prefer="wait=30", **{"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.headers["Location"].rsplit("/", 1)[1]

    def edge_line() -> dict[str, Any] | None:
        for entry in log_lines(stack, "api"):
            if entry.get("request_id") == request_id and entry["logger"] == "api.access":
                return entry
        return None

    access = wait_until(edge_line)
    assert access["job_id"] == job_id
    assert access["method"] == "POST" and access["route"] == "/v1/assistants"
    assert access["status"] == 200 and access["tenant"] == tenant.name

    events = [
        entry
        for entry in log_lines(stack, "worker")
        if entry.get("request_id") == request_id and entry.get("job_id") == job_id
    ]
    assert [entry["message"] for entry in events] == ["job started", "job finished"]
    assert events[-1]["status_code"] == 200


def test_a_request_id_is_made_when_none_or_a_malformed_one_is_sent(tenant: Tenant) -> None:
    made = tenant.request("GET", "/v1/models").headers["X-Request-ID"]
    assert made.startswith("req_")
    bad = tenant.request("GET", "/v1/models", headers={"X-Request-ID": "has spaces"})
    assert bad.headers["X-Request-ID"].startswith("req_")


def test_every_line_of_the_edge_and_the_worker_is_a_json_object(stack: Stack) -> None:
    for process in ("api", "worker"):
        lines = log_lines(stack, process)
        assert lines
        for entry in lines:
            assert {"time", "level", "logger", "message"} <= set(entry)


def test_no_api_key_or_webhook_secret_is_ever_logged(stack: Stack, tenant: Tenant) -> None:
    request_id = "secrets-" + uuid.uuid4().hex
    headers = {"X-Request-ID": request_id}
    tenant.create({"model": "m", "name": tenant.api_key}, Prefer="wait=30", **headers)
    rotated = tenant.request("POST", "/v1/webhook_secret/rotate", headers=headers)
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    wrong_key = "aik_" + uuid.uuid4().hex
    refused = tenant.session.get(
        stack.url + "/v1/models",
        headers={"Authorization": f"Bearer {wrong_key}", **headers},
        timeout=30,
    )
    assert refused.status_code == 401
    wait_until(lambda: log_text(stack).count(request_id) >= 3)
    text = log_text(stack)
    for secret in (tenant.api_key, tenant.webhook_secret, new_secret, wrong_key):
        assert secret not in text


def test_the_worker_logs_how_it_started(stack: Stack) -> None:
    started = next(e for e in log_lines(stack, "worker") if e["message"] == "worker starting")
    assert started["queues"] == ["single", "bulk", "webhooks", "maintenance"]
    assert started["beat"] is True
