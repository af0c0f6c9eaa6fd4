"""The `assistant-ingest` command as a provisioning script would run it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from cli.embedded import free_port
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
    assert batch["request_counts"] == {
        "total": 51, "completed": 50, "failed": 1, "cancelled": 0,
        "created": 50, "updated": 0, "unchanged": 0, "deleted": 0,
    }  # fmt: skip
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


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    return line


def test_bulk_with_a_missing_file_or_a_server_that_is_down_says_so_in_one_line(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    missing = tmp_path / "missing.jsonl"
    done = cli(stack, "bulk", "submit", str(missing), env=env)
    assert done.returncode == 2
    assert one_line_error(done) == f"error: {missing}: No such file or directory"

    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"body": {"model": "m"}}\n')
    down = {**env, "ASSISTANT_INGEST_URL": f"http://127.0.0.1:{free_port()}"}
    for args in (("submit", str(requests), "--wait"), ("results", "batch_x")):
        done = cli(stack, "bulk", *args, env=down)
        assert done.returncode == 2
        assert one_line_error(done).startswith("error: cannot reach http://127.0.0.1:")

    done = cli(stack, "bulk", "submit", str(missing), "--json", env=down)
    assert done.returncode == 2
    assert json.loads(one_line_error(done)) == {"error": f"{missing}: No such file or directory"}


def test_bulk_lists_a_refused_batch_by_line_and_custom_id(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        '{"custom_id": "a", "body": {"model": "m"}}\n'
        '{"custom_id": "b"}\n'
        "\n"
        '{"custom_id": "a", "body": {"model": "m"}}\n'
        "{not json\n"
    )
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    done = cli(stack, "bulk", "submit", str(requests), env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    first, *lines = done.stderr.splitlines()
    assert first == "error: HTTP 422: the batch was refused, nothing was created:"
    assert lines[0] == '  line 2 (custom_id "b"): body: Field required'
    assert lines[1] == '  line 4 (custom_id "a"): custom_id: custom_id is already used by request 0'
    assert lines[2].startswith("  line 5: JSON decode error (")
    assert lines[2].endswith(" at character 2")
    assert len(lines) == 3

    done = cli(stack, "bulk", "submit", str(requests), "--json", env=env)
    assert done.returncode == 1
    report = json.loads(one_line_error(done))
    assert report["status"] == 422
    assert [(e["line"], e["custom_id"], e["type"]) for e in report["errors"]] == [
        (2, "b", "missing"),
        (4, "a", "duplicate_custom_id"),
        (5, None, "json_invalid"),
    ]
    assert [entry["loc"][:2] for entry in report["detail"]] == [
        ["body", 1],
        ["body", 3],
        ["body", 4],
    ]
    assert tenant.request("GET", "/v1/batches").json()["data"] == []


def test_keys_with_a_store_it_cannot_reach_says_so_in_one_line(stack: Stack) -> None:
    unreachable = f"mongodb://user:secret@127.0.0.1:{free_port()}/x"
    done = cli(stack, "keys", "create", "--tenant", "t", env={"MONGODB_URI": unreachable})
    assert done.returncode == 2
    line = one_line_error(done)
    assert line.startswith("error: cannot reach the store at mongodb://127.0.0.1:")
    assert "secret" not in line


def test_apply_dry_run_then_apply_then_export_round_trip(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    manifest = tmp_path / "assistants.jsonl"
    lines = [{"custom_id": f"k{i}", "body": {"model": "m", "name": f"n{i}"}} for i in range(8)]
    lines[3]["body"] = {"model": "m", "bogus": 1}
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}

    planned = cli(stack, "apply", str(manifest), "--dry-run", env=env)
    assert planned.returncode == 3, planned.stderr  # one line is invalid
    assert [json.loads(line)["action"] for line in planned.stdout.splitlines()].count("create") == 7
    assert "  create     7" in planned.stderr
    assert '  line 4 (custom_id "k3"): bogus: Extra inputs are not permitted' in planned.stderr
    assert tenant.request("GET", "/v1/assistants").json()["data"] == []

    applied = cli(stack, "apply", str(manifest), "--wait", env=env)
    assert applied.returncode == 3, applied.stderr
    assert "8/8" in applied.stderr
    assert "  created    7" in applied.stderr
    assert "  failed     1" in applied.stderr
    assert '  line 4 (custom_id "k3"): bogus: Extra inputs are not permitted' in applied.stderr

    exported = tmp_path / "export.jsonl"
    done = cli(stack, "export", "-o", str(exported), env=env)
    assert done.returncode == 0, done.stderr
    assert len(exported.read_text().splitlines()) == 7
    again = cli(stack, "apply", str(exported), "--wait", "--prune", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["request_counts"]["unchanged"] == 7
    assert "  unchanged  7" in again.stderr


def test_the_url_may_end_in_v1_as_the_sdks_does(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    manifest = tmp_path / "one.jsonl"
    manifest.write_text('{"custom_id": "k", "body": {"model": "m"}}\n')
    env = {"ASSISTANT_INGEST_URL": stack.url + "/v1/", "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    applied = cli(stack, "apply", str(manifest), "--wait", env=env)
    assert applied.returncode == 0, applied.stderr
    assert re.search(r"^batch batch_\S+: 1 line$", applied.stderr, re.M), applied.stderr
    refused = tmp_path / "refused.jsonl"
    refused.write_text('{"custom_id": "b"}\n')
    done = cli(stack, "bulk", "submit", str(refused), "--json", env=env)
    assert done.returncode == 1
    # The same words as without --json.
    assert json.loads(one_line_error(done))["error"] == (
        "HTTP 422: the batch was refused, nothing was created"
    )


def test_apply_and_export_with_a_missing_file_or_a_server_that_is_down_say_so_in_one_line(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    missing = tmp_path / "missing.jsonl"
    done = cli(stack, "apply", str(missing), "--dry-run", env=env)
    assert done.returncode == 2
    assert one_line_error(done) == f"error: {missing}: No such file or directory"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"custom_id": "k", "body": {"model": "m"}}\n')
    down = {**env, "ASSISTANT_INGEST_URL": f"http://127.0.0.1:{free_port()}"}
    for args in (("apply", str(manifest), "--wait"), ("export",)):
        done = cli(stack, *args, env=down)
        assert done.returncode == 2
        assert one_line_error(done).startswith("error: cannot reach http://127.0.0.1:")


def test_plan_exits_0_when_nothing_would_change_2_when_something_would_1_on_error(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    manifest = tmp_path / "assistants.jsonl"
    lines = [
        {"custom_id": f"k{i}", "body": {"model": "m", "name": f"n{i}", "metadata": {"team": "a"}}}
        for i in range(4)
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    fresh = cli(stack, "plan", str(manifest), env=env)
    assert fresh.returncode == 2, fresh.stderr
    assert '+ "k0" (new, model "m")' in fresh.stdout.splitlines()
    assert "plan: 4 to create, 0 to update, 0 to delete, 0 unchanged" in fresh.stderr
    assert tenant.request("GET", "/v1/assistants").json()["data"] == []  # nothing changed
    applied = cli(stack, "apply", str(manifest), "--wait", env=env)
    assert applied.returncode == 0, applied.stderr

    same = cli(stack, "plan", str(manifest), env=env)
    assert same.returncode == 0, same.stderr
    assert same.stdout == "4 unchanged\n"

    # The file `export` wrote plans as a no-op: no drift.
    exported = tmp_path / "export.jsonl"
    assert cli(stack, "export", "-o", str(exported), env=env).returncode == 0
    drift = cli(stack, "plan", str(exported), "--prune", env=env)
    assert drift.returncode == 0, drift.stdout + drift.stderr

    lines[1]["body"] = {"model": "m", "name": "renamed", "metadata": {"team": "b"}}
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines[:3]))
    changed = cli(stack, "plan", str(manifest), "--prune", env=env)
    assert changed.returncode == 2, changed.stderr
    shown = changed.stdout.splitlines()
    update = shown.index(next(line for line in shown if line.startswith('~ "k1"')))
    assert shown[update + 1 : update + 3] == [
        '    name: "n1" -> "renamed"',
        '    metadata.team: "a" -> "b"',
    ]
    assert any(line.startswith('- "k3"') for line in shown)
    assert shown[-1] == "2 unchanged"
    as_json = cli(stack, "plan", str(manifest), "--prune", "--json", env=env)
    assert as_json.returncode == 2
    planned = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert planned[1]["changes"]["name"] == {"from": "n1", "to": "renamed"}

    lines[2]["body"] = {"model": "m", "bogus": 1}
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines[:3]))
    invalid = cli(stack, "plan", str(manifest), env=env)
    assert invalid.returncode == 1
    assert '! "k2" (422): bogus: Extra inputs are not permitted' in invalid.stdout
    missing = cli(stack, "plan", str(tmp_path / "missing.jsonl"), env=env)
    assert missing.returncode == 1
    down = {**env, "ASSISTANT_INGEST_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = cli(stack, "plan", str(manifest), env=down)
    assert unreachable.returncode == 1
    assert one_line_error(unreachable).startswith("error: cannot reach http://127.0.0.1:")
    # Nothing was applied by any plan.
    names = {a["name"] for a in tenant.request("GET", "/v1/assistants").json()["data"]}
    assert names == {"n0", "n1", "n2", "n3"}


def test_apply_if_plan_shows_the_plan_then_applies_exactly_it(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"ASSISTANT_INGEST_URL": stack.url, "ASSISTANT_INGEST_API_KEY": tenant.api_key}
    manifest = tmp_path / "assistants.jsonl"
    manifest.write_text('{"custom_id": "k", "body": {"model": "m", "name": "one"}}\n')
    asked = cli(stack, "apply", str(manifest), "--if-plan", env=env)  # stdin is not a terminal
    assert asked.returncode == 2
    assert '+ "k" (new, model "m")' in asked.stderr
    assert asked.stderr.splitlines()[-1] == "error: --if-plan asks before applying: give --yes"
    assert tenant.request("GET", "/v1/assistants").json()["data"] == []
    applied = cli(stack, "apply", str(manifest), "--if-plan", "--yes", "--wait", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "  created    1" in applied.stderr
    again = cli(stack, "apply", str(manifest), "--if-plan", "--yes", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to apply" in again.stderr


def test_free_ports_are_below_the_ports_outgoing_connections_take() -> None:
    # A port from the kernel's range for outgoing connections can be taken by
    # any connection opened between `free_port` and the server's bind (an
    # edge's metrics port was, with three test processes).
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(10000 <= port < ephemeral for port in ports), ports
    assert len(set(ports)) > 40, ports  # spread: two callers rarely meet
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
