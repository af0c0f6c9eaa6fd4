"""`/healthz` and `/readyz`, in process against real servers, one of them hung."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from api.app import create_app
from api.context import close
from cli.embedded import Server, free_port
from tests.local import Local
from tests.stack import Servers, wait_until
from worker.settings import Settings


def test_readyz_is_ready_while_both_servers_answer(local: Local) -> None:
    response = local.client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"mongodb": "ok", "redis": "ok"}}
    assert local.client().get("/healthz").get_json() == {"status": "ok"}


def stopped(pid: int) -> bool:
    """The process is stopped by a signal (its state in /proc is T)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"


def store_at(servers: Servers, port: int) -> Settings:
    """The tests' settings with the store at `port`, and a timeout of 1 s."""
    settings = servers.settings(STORE_TIMEOUT_MS="1000")
    return settings.model_copy(update={"mongodb_uri": f"mongodb://127.0.0.1:{port}/x"})


def test_readyz_with_a_hung_store_answers_503_within_the_store_timeout_in_words(
    servers: Servers, hung_store: Server
) -> None:
    settings = store_at(servers, hung_store.port)
    deployment = Local(settings)
    try:
        client = deployment.client()
        assert client.get("/readyz").status_code == 200  # connected, then hung
        os.kill(hung_store.process.pid, signal.SIGSTOP)
        wait_until(lambda: stopped(hung_store.process.pid), timeout=10, interval=0.01)
        started = time.monotonic()
        response = client.get("/readyz")
        took = time.monotonic() - started
    finally:
        os.kill(hung_store.process.pid, signal.SIGCONT)
        deployment.close()
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"mongodb": "unavailable: no answer within 1 s", "redis": "ok"},
    }
    # Within the store's timeout (1 s), with room for a loaded machine; pymongo's
    # own detection of a hung server takes its heartbeat period (10 s).
    assert took < 3, took


def test_readyz_with_a_store_that_is_down_says_it_cannot_connect(
    servers: Servers, tmp_path: Path
) -> None:
    settings = store_at(servers, free_port())
    app = create_app(settings)
    try:
        body = app.test_client().get("/readyz").get_json()
    finally:
        close(app)
    assert body["checks"]["mongodb"].startswith("unavailable: ")
    assert body["checks"]["mongodb"] in (
        "unavailable: cannot connect (connection refused)",
        "unavailable: no answer within 1 s",
    )
    assert "Error" not in body["checks"]["mongodb"] and "_" not in body["checks"]["mongodb"]
