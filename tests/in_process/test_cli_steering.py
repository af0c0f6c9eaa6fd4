"""`assistant-ingest bulk status|wait|cancel|retry`, and Ctrl-C on a command that
waits, against the edge served on loopback (no bulk worker: batches stay in
progress until cancelled, so an interrupted wait is one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.local import NO_BULK, Local, LocalTenant, running_local
from tests.stack import Servers, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(servers: Servers) -> Iterator[tuple[Local, str]]:
    with running_local(servers.settings(EXPRESS_BATCH_LINES="0"), NO_BULK) as deployment:
        server = make_server("127.0.0.1", 0, deployment.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield deployment, f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(10)


def env(url: str, tenant: LocalTenant) -> dict[str, str]:
    return {
        **os.environ,
        "ASSISTANT_INGEST_URL": url,
        "ASSISTANT_INGEST_API_KEY": tenant.api_key,
        "PYTHONPATH": str(ROOT),
    }


def cli(url: str, tenant: LocalTenant, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env(url, tenant),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def requests_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "requests.jsonl"
    lines = [{"custom_id": f"c{i}", "body": {"model": "m"}} for i in range(count)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def interrupted(url: str, tenant: LocalTenant, *args: str) -> tuple[int, str]:
    """Run a waiting command, Ctrl-C it once it shows progress; its exit and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env(url, tenant),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # As a terminal's foreground job gets it: a suite run in the background
        # (`nohup ... &`, as CI may) starts with SIGINT ignored, and a process
        # that starts so never sees Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "ok 0" not in seen and time.monotonic() < deadline:  # the progress line is drawn
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    return process.returncode, seen + err


def test_ctrl_c_on_submit_wait_names_the_batch_and_how_to_follow_it(
    served: tuple[Local, str], tmp_path: Path
) -> None:
    local, url = served
    tenant = local.new_tenant()
    upload = str(requests_file(tmp_path, 3))
    code, err = interrupted(url, tenant, "bulk", "submit", upload, "--wait")
    assert code == 130, err
    (batch,) = tenant.request("GET", "/v1/batches").json()["data"]
    assert f"assistant-ingest bulk wait {batch['id']}" in err
    assert batch["status"] == "in_progress"  # the batch goes on


def test_ctrl_c_on_apply_wait_names_the_batch_and_how_to_follow_it(
    served: tuple[Local, str], tmp_path: Path
) -> None:
    local, url = served
    tenant = local.new_tenant()
    code, err = interrupted(url, tenant, "apply", str(requests_file(tmp_path, 2)), "--wait")
    assert code == 130, err
    (batch,) = tenant.request("GET", "/v1/batches").json()["data"]
    assert f"assistant-ingest bulk wait {batch['id']}" in err


def test_status_wait_cancel_and_retry(served: tuple[Local, str], tmp_path: Path) -> None:
    local, url = served
    tenant = local.new_tenant()
    submitted = cli(url, tenant, "bulk", "submit", str(requests_file(tmp_path, 3)))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]

    status = cli(url, tenant, "bulk", "status", batch_id)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "in_progress"

    code, err = interrupted(url, tenant, "bulk", "wait", batch_id)
    assert code == 130 and f"assistant-ingest bulk wait {batch_id}" in err
    assert "[" in err and "0/3" in err  # the progress bar

    early = cli(url, tenant, "bulk", "retry", batch_id)
    assert early.returncode == 1
    assert "409" in early.stderr and "still in_progress" in early.stderr

    cancelled = cli(url, tenant, "bulk", "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")
    waited = cli(url, tenant, "bulk", "wait", batch_id)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "cancelled"

    retried = cli(url, tenant, "bulk", "retry", batch_id, "--only", "cancelled")
    assert retried.returncode == 0, retried.stderr
    child = json.loads(retried.stdout)
    assert child["retry_of"] == batch_id and child["request_counts"]["total"] == 3
    assert f"batch {child['id']}: 3 requests, a retry of {batch_id}" in retried.stderr
    wait_until(lambda: tenant.request("GET", f"/v1/batches/{child['id']}").status_code == 200)
