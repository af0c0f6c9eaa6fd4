"""What the console's tests and screenshots share: signing a test client in, and
a tenant's work to look at (a batch with failed lines, a delivery with attempts)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.local import Local, LocalTenant, Worker
from tests.stack import wait_until
from worker.queueing import routes

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


def finished_batch(tenant: LocalTenant, lines: list[dict[str, Any]] = MIXED) -> dict[str, Any]:
    """A batch of `lines`, submitted through the API and awaited until it is completed."""
    made = tenant.request("POST", "/v1/batches", data=jsonl(lines), headers=JSONL)
    assert made.status_code == 202, made.text
    batch_id = made.json()["id"]

    def completed() -> dict[str, Any] | None:
        if tenant.local.queues != routes.ALL_QUEUES:
            run_bulk(tenant.local)  # no bulk worker serves this deployment
        doc: dict[str, Any] = tenant.request("GET", f"/v1/batches/{batch_id}").json()
        return doc if doc["status"] == "completed" else None

    return dict(wait_until(completed))


# Debian's chromium and its driver (bin/chromium installs them).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@contextmanager
def chromium(profile: Path, size: tuple[int, int] = (1280, 900)) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, driven through the system's
    chromedriver (selenium-manager is not asked to download anything). A
    machine without them fails here: run bin/chromium."""
    for needed in (CHROMIUM, CHROMEDRIVER):
        assert needed.exists(), f"{needed} is missing: run bin/chromium to install it"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # a line per request would bury what a failing test says


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """The app served over HTTP on a free loopback port, by a real (threaded)
    WSGI server in this process; its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_bulk(local: Local) -> None:
    """Run what a bulk worker would, now: a deployment without one (NO_BULK)
    keeps its batches in progress until this is called."""
    Worker(local.rt).run_queued()


def browser_sign_in(driver: WebDriver, base: str, api_key: str) -> None:
    driver.get(base + "/console/sign-in")
    field = driver.find_element(By.ID, "api_key")
    field.send_keys(api_key)
    field.submit()
    WebDriverWait(driver, 20).until(EC.url_contains("/console/batches"))
