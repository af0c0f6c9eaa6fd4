"""The programs of each ecosystem run this service as their users expect:
`celery -A worker.celery_app ...` and `gunicorn -c python:api.gunicorn_conf ...`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from cli.embedded import free_port, wait_for_port
from tests.stack import Stack, wait_until

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


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
    assert "'visibility_timeout': 3600" in done.stdout
    assert "'assistants.process_chunk': {'queue': 'bulk'}" in done.stdout


def test_celery_inspect_lists_the_tasks_of_the_running_workers(stack: Stack) -> None:
    # Named, the worker's answer ends the wait; unnamed, inspect waits out its timeout.
    worker = f"worker-{stack.name}@{socket.gethostname()}"
    done = celery(stack, "inspect", "registered", "--timeout", "10", "--destination", worker)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        "assistants.process_single",
        "assistants.process_chunk",
        "assistants.process_turn",
        "webhooks.deliver",
        "maintenance.reconcile",
        "maintenance.sweep_webhooks",
    ):
        assert name in done.stdout


def start_edge(
    stack: Stack, how: str, port: int, log: Path, gunicorn_args: str = "", **env: str
) -> subprocess.Popen[bytes]:
    """The edge started as docker-compose.yml starts it ("gunicorn"), or as `bin/dev`
    does ("assistant-ingest api"), its output in `log`."""
    if how == "gunicorn":
        command = [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf", "api.app:create_app()"]
        env["GUNICORN_CMD_ARGS"] = f"--bind=127.0.0.1:{port} --workers=1 {gunicorn_args}"
    else:
        command = [str(BIN / "assistant-ingest"), "api", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env={**stack.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def gunicorn_edge(
    stack: Stack, tmp_path: Path, gunicorn_args: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """An edge under gunicorn, serving once its port answers; killed with its group
    if the test leaves it running."""
    port = free_port()
    process = start_edge(stack, "gunicorn", port, tmp_path / "gunicorn.log", gunicorn_args, **env)
    try:
        wait_for_port(port, process, timeout=60)
        yield process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.mark.parametrize("how", ["gunicorn", "assistant-ingest api"])
def test_the_edge_serves_with_json_logs_and_gevent_patched_first(
    stack: Stack, tmp_path: Path, how: str
) -> None:
    port = free_port()
    process = start_edge(stack, how, port, tmp_path / "gunicorn.log")
    try:
        wait_for_port(port, process, timeout=60)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        tenant = stack.new_tenant()
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/assistants",
            json={"model": "gpt-4o"},
            headers={"Authorization": f"Bearer {tenant.api_key}", "Prefer": "wait=20"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["object"] == "assistant"
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
        assert "assistant_ingest_http_requests_total" in metrics
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    lines = (tmp_path / "gunicorn.log").read_text().splitlines()
    # Every line gunicorn and the app wrote is JSON; and gevent patched `ssl`
    # before anything imported it (else it warns, and TLS to the store or the
    # broker would block the event loop).
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
    assert not [line for line in lines if "MonkeyPatchWarning" in line], lines


def test_a_graceful_stop_closes_idle_kept_alive_connections_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    # Keep-alive far above the bound below: the stop must not wait for it.
    with gunicorn_edge(stack, tmp_path, "--keep-alive=60") as (process, port):
        client = requests.Session()
        assert client.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        process.send_signal(signal.SIGTERM)
        # Stopped well before the kept-alive connection's 60 s (or the 30 s grace).
        assert process.wait(20) == 0


def test_an_edge_stopped_while_its_worker_boots_stops_once_booted(
    stack: Stack, tmp_path: Path
) -> None:
    # The arbiter listens before its worker has booted: a SIGTERM now reaches
    # the worker before it handles signals itself (`dev` stopped at once, a
    # deployment stopped as it starts). It once served on until the grace
    # ran out; the grace here is far above the bound below.
    with gunicorn_edge(stack, tmp_path, "--graceful-timeout=120") as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_a_graceful_stop_answers_requests_held_by_a_wait_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    # A queue no worker serves, so the job stays queued; the grace is far above
    # the wait, which is far above the bound below.
    prefix = f"nowork-{uuid.uuid4().hex[:8]}"
    tenant = stack.new_tenant()
    grace = "--graceful-timeout=120"
    with gunicorn_edge(stack, tmp_path, grace, REDIS_PREFIX=prefix) as (process, port):
        url = f"http://127.0.0.1:{port}/v1/assistants"
        headers = {"Authorization": f"Bearer {tenant.api_key}", "Prefer": "wait=60"}
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(requests.post, url, json={"model": "m"}, headers=headers, timeout=90)
            # Stored, so held in its wait (or about to be).
            wait_until(lambda: stack.db.jobs.count_documents({"tenant": tenant.name}) == 1)
            assert not held.done()
            process.send_signal(signal.SIGTERM)
            answer = held.result(40)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        assert process.wait(40) == 0


def test_with_a_metrics_port_the_edge_serves_metrics_there_and_not_on_the_api_port(
    stack: Stack, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "gunicorn.log"
    process = start_edge(stack, "gunicorn", port, log, METRICS_PORT=str(metrics_port))
    try:
        wait_for_port(port, process, timeout=60)
        wait_for_port(metrics_port, process, timeout=60)
        api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
        tenant = stack.new_tenant()
        key = {"Authorization": f"Bearer {tenant.api_key}"}
        assert requests.get(api + "/v1/models", headers=key, timeout=60).status_code == 200
        assert requests.get(api + "/metrics", timeout=60).status_code == 404
        scraped = requests.get(metrics + "/metrics", timeout=60)
        assert scraped.status_code == 200
        assert "assistant_ingest_http_requests_total" in scraped.text
        assert requests.get(metrics + "/readyz", timeout=60).status_code == 200
        # The metrics port answers no API route, with a key or without.
        assert requests.get(metrics + "/v1/models", headers=key, timeout=60).status_code == 404
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@pytest.mark.parametrize(
    "command",
    [["assistant-ingest", "beat"], ["celery", "-A", "worker.celery_app", "beat"]],
    ids=["assistant-ingest", "celery"],
)
def test_beat_keeps_its_schedule_file_out_of_the_folder_it_was_started_from(
    stack: Stack, tmp_path: Path, command: list[str]
) -> None:
    prefix = f"beat-{uuid.uuid4().hex[:8]}"
    env = {**stack.env, "REDIS_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    state = Path(tempfile.gettempdir()) / f"assistant-ingest-beat-{prefix}"
    process = subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # beat writes its state file as it starts.
        wait_until(lambda: list(state.parent.glob(state.name + "*")), timeout=60)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        for path in state.parent.glob(state.name + "*"):
            path.unlink()
    assert list(tmp_path.iterdir()) == []


def test_a_workers_beat_schedules_from_memory_and_leaves_no_file(
    stack: Stack, tmp_path: Path
) -> None:
    import redis as redis_client

    from worker.queueing.routes import MAINTENANCE_QUEUE, queue_depths

    prefix = f"beat-{uuid.uuid4().hex[:8]}"
    scratch, folder = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    folder.mkdir()
    # Not serving the maintenance queue: what beat sends there stays to be seen.
    process = subprocess.Popen(
        [str(BIN / "assistant-ingest"), "worker", "--queues", "single", "--beat"],
        cwd=folder,
        env={**stack.env, "REDIS_PREFIX": prefix, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    redis = redis_client.Redis.from_url(stack.servers.redis_url)
    try:
        # The reconciler's entry runs every second (tests' settings): beat works.
        wait_until(
            lambda: queue_depths(redis, prefix, [MAINTENANCE_QUEUE])[MAINTENANCE_QUEUE] >= 2,
            timeout=60,
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        for key in redis.scan_iter(f"{prefix}*"):
            redis.delete(key)
        redis.close()
    assert process.returncode == 0
    assert list(scratch.iterdir()) == []
    assert list(folder.iterdir()) == []
