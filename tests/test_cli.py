"""The `assistant-ingest` command as a provisioning script would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.stack import Stack, Tenant, wait_until


def cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**stack.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keys_create_prints_one_line_of_json_and_the_key_works(stack: Stack) -> None:
    done = cli(stack, "keys", "create", "--tenant", "cli-tenant")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    created = json.loads(line)
    assert set(created) == {"tenant", "api_key", "webhook_secret"}
    assert created["tenant"] == "cli-tenant"
    assert created["webhook_secret"].startswith("whsec_")
    owner = Tenant(stack, created["tenant"], created["api_key"], created["webhook_secret"])
    assert owner.create({"model": "m"}).status_code == 202

    revoked = cli(stack, "keys", "revoke", created["api_key"])
    assert revoked.returncode == 0, revoked.stderr
    # Edges trust a checked key for AUTH_CACHE_SECONDS (1 s here).
    wait_until(lambda: owner.create({"model": "m"}).status_code == 401, timeout=5)


def test_bulk_submit_waits_and_results_are_written(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = [{"custom_id": f"a{i}", "body": {"model": "m", "name": f"n{i}"}} for i in range(50)]
    lines.append({"custom_id": "bad", "body": {"name": "no model"}})
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}

    submitted = cli(stack, "bulk", "submit", str(requests), "--wait", env=env)
    assert submitted.returncode == 3, submitted.stderr  # one request failed
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 51, "completed": 50, "failed": 1, "cancelled": 0}
    assert "51/51" in submitted.stderr

    out = tmp_path / "results.jsonl"
    fetched = cli(stack, "bulk", "results", batch["id"], "-o", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["custom_id"] for row in rows] == [f"a{i}" for i in range(50)] + ["bad"]
    assert rows[-1]["status_code"] == 422

    failed = cli(stack, "bulk", "results", batch["id"], "--status", "failed", env=env)
    assert [json.loads(line)["custom_id"] for line in failed.stdout.splitlines()] == ["bad"]


def test_bulk_without_a_key_says_so(stack: Stack, tmp_path: Path) -> None:
    done = cli(stack, "bulk", "results", "batch_x", env={"ASSISTANT_INGEST_API_KEY": ""})
    assert done.returncode == 2
    assert "api-key" in done.stderr
