"""What the console's tests and screenshots share: signing a test client in, and
a tenant's work to look at (a batch with failed lines, a delivery with attempts)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from tests.local import LocalTenant

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SIGN_IN_TOKEN = re.compile(r'name="sign_in_token" value="([^"]+)"')
JSONL = {"Content-Type": "application/x-ndjson"}


def sign_in(client: FlaskClient, api_key: str) -> str:
    """Sign the client in; the session's CSRF token."""
    form = client.get("/console/sign-in").get_data(as_text=True)
    token = SIGN_IN_TOKEN.search(form)
    assert token is not None
    answer = client.post(
        "/console/sign-in", data={"sign_in_token": token.group(1), "api_key": api_key}
    )
    assert answer.status_code == 303, answer.get_data(as_text=True)
    assert answer.headers["Location"].endswith("/console/batches")
    return csrf_of(client.get("/console/batches").get_data(as_text=True))


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, html[:2000]
    return found.group(1)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# Three lines, two of which fail validation: field paths to show.
MIXED = [
    {"custom_id": "support-bot", "body": {"model": "gpt-4o", "name": "Support"}},
    {"custom_id": "no-model", "body": {"name": "Lost"}},
    {"custom_id": "bad-fields", "body": {"model": "gpt-4o", "name": 5, "metadata": {"team": 5}}},
]


def wait_for(predicate: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def finished_batch(tenant: LocalTenant, lines: list[dict[str, Any]] = MIXED) -> dict[str, Any]:
    """A batch of `lines`, submitted through the API and awaited until it is completed."""
    made = tenant.request("POST", "/v1/batches", data=jsonl(lines), headers=JSONL)
    assert made.status_code == 202, made.text
    batch_id = made.json()["id"]
    return dict(
        wait_for(
            lambda: (
                (doc := tenant.request("GET", f"/v1/batches/{batch_id}").json())["status"]
                == "completed"
                and doc
            )
        )
    )
