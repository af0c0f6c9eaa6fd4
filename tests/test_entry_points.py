"""The programs of each ecosystem run this service as their users expect:
`celery -A worker.celery_app ...` and `gunicorn -c python:api.gunicorn_conf ...`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from cli.embedded import free_port, wait_for_port
from tests.stack import Stack

BIN = Path(sys.executable).parent


def celery(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "celery"), "-A", "worker.celery_app", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_celery_report_shows_the_configured_app(stack: Stack) -> None:
    done = celery(stack, "report")
    assert done.returncode == 0, done.stderr
    assert "transport:redis" in done.stdout.replace(" ", "")
    assert "task_acks_late: True" in done.stdout
    # Celery 5.6 masks settings whose names hold "key", global_keyprefix among them.
    shown = (f"'global_keyprefix': '{stack.name}:celery:'", "'global_keyprefix': '********'")
    assert any(value in done.stdout for value in shown)


def test_celery_inspect_lists_the_tasks_of_the_running_workers(stack: Stack) -> None:
    done = celery(stack, "inspect", "registered", "--timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        "assistants.process_single",
        "assistants.process_chunk",
        "webhooks.deliver",
        "maintenance.reconcile",
        "maintenance.sweep_webhooks",
    ):
        assert name in done.stdout


def test_gunicorn_with_the_config_module_serves_the_edge(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = {**stack.env, "GUNICORN_CMD_ARGS": f"--bind=127.0.0.1:{port} --workers=1"}
    with (tmp_path / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf", "api.app:create_app()"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, timeout=60)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        tenant = stack.new_tenant()
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/assistants",
            json={"model": "gpt-4o"},
            headers={"Authorization": f"Bearer {tenant.api_key}", "Prefer": "wait=20"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["object"] == "assistant"
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "assistant_ingest_http_requests_total" in metrics
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    lines = (tmp_path / "gunicorn.log").read_text().splitlines()
    # Every line gunicorn and the app wrote is JSON, as under `assistant-ingest api`.
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
