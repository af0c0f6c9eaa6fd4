"""Provisioning as code: apply a manifest, dry-run it, export it; on real servers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.in_process.test_batches import finished_batch, jsonl, results, submit
from tests.local import Local
from tests.stack import Servers, Stack, Tenant, running_stack, wait_until
from worker.domain.assistants import key_ref
from worker.domain.schema import validate_create
from worker.domain.units import new_unit
from worker.services import applying
from worker.store import assistants
from worker.store.indexes import ensure_indexes

NDJSON = "application/x-ndjson"


def manifest(count: int, prefix: str = "k") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "body": {"model": "gpt-4", "name": f"n{i}", "metadata": {"team": "a"}},
        }
        for i in range(count)
    ]


def apply(tenant: Tenant, lines: list[Any], query: str = "") -> dict[str, Any]:
    response = tenant.request(
        "POST",
        f"/v1/batches?mode=apply{query}",
        data=jsonl(lines),
        headers={"Content-Type": NDJSON},
    )
    assert response.status_code == 202, response.text
    assert response.json()["mode"] == "apply"
    return finished_batch(tenant, response.json()["id"])


def dry_run(tenant: Tenant, lines: list[Any], query: str = "&mode=apply") -> list[dict[str, Any]]:
    response = tenant.request(
        "POST",
        f"/v1/batches?dry_run=true{query}",
        data=jsonl(lines),
        headers={"Content-Type": NDJSON},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(NDJSON)
    return [json.loads(line) for line in response.text.splitlines()]


def counts(batch: dict[str, Any]) -> dict[str, int]:
    keys = ("total", "completed", "failed", "created", "updated", "unchanged", "deleted")
    return {key: batch["request_counts"][key] for key in keys}


def stored(stack: Stack, tenant: Tenant) -> list[dict[str, Any]]:
    store = stack.db
    return list(store.assistants.find({"tenant": tenant.name}))


def test_apply_creates_then_reapplying_is_all_unchanged(stack: Stack, tenant: Tenant) -> None:
    lines = manifest(700)
    first = apply(tenant, lines)
    assert counts(first) == {
        "total": 700, "completed": 700, "failed": 0,
        "created": 700, "updated": 0, "unchanged": 0, "deleted": 0,
    }  # fmt: skip
    rows = results(tenant, first["id"])
    assert {row["action"] for row in rows} == {"created"}
    assert rows[3]["body"]["name"] == "n3"
    assert "provisioning_key" not in rows[3]["body"]
    docs = stored(stack, tenant)
    assert sorted(doc["provisioning_key"] for doc in docs) == sorted(f"k{i}" for i in range(700))
    public = tenant.request("GET", f"/v1/assistants/{rows[3]['body']['id']}").json()
    assert public == rows[3]["body"]
    assert "provisioning_key" not in public

    before = {doc["_id"]: doc for doc in docs}
    again = apply(tenant, lines)
    assert counts(again)["unchanged"] == 700
    assert counts(again)["created"] == counts(again)["updated"] == 0
    rows = results(tenant, again["id"])
    assert {row["action"] for row in rows} == {"unchanged"}
    assert rows[3]["body"] == public
    assert {doc["_id"]: doc for doc in stored(stack, tenant)} == before  # nothing written


def test_editing_one_line_updates_one_assistant_to_exactly_the_body(tenant: Tenant) -> None:
    lines = manifest(30)
    apply(tenant, lines)
    lines[5] = {"custom_id": "k5", "body": {"model": "gpt-4o", "instructions": "be brief"}}
    batch = apply(tenant, lines)
    assert counts(batch)["updated"] == 1
    assert counts(batch)["unchanged"] == 29
    row = results(tenant, batch["id"])[5]
    assert row["action"] == "updated"
    assert row["body"]["model"] == "gpt-4o"
    # The manifest is the desired state: absent fields go back to their defaults.
    assert row["body"]["name"] is None
    assert row["body"]["metadata"] == {}
    assert tenant.request("GET", f"/v1/assistants/{row['body']['id']}").json() == row["body"]
    assert row["changes"] == {
        "name": {"from": "n5", "to": None},
        "model": {"from": "gpt-4", "to": "gpt-4o"},
        "instructions": {"from": None, "to": "be brief"},
        "metadata.team": {"from": "a", "to": None},
    }
    assert "changes" not in results(tenant, batch["id"])[6]


def test_a_plan_shows_each_field_change_and_cuts_long_values(tenant: Tenant) -> None:
    lines = manifest(2)
    apply(tenant, lines)
    long = "x" * 3000
    lines[0]["body"] = {
        "model": "gpt-4",
        "name": "n0",
        "instructions": long,
        "metadata": {"team": "b", "tier": "1"},
    }
    plan = dry_run(tenant, lines)
    assert plan[0]["action"] == "update"
    assert plan[1]["action"] == "unchanged" and "changes" not in plan[1]
    changes = plan[0]["changes"]
    assert changes["metadata.team"] == {"from": "a", "to": "b"}
    assert changes["metadata.tier"] == {"from": None, "to": "1"}
    cut = changes["instructions"]
    assert cut["cut"] is True and cut["from"] is None
    assert cut["to"] == "x" * 1000 + "…[cut: 2000 more characters]"
    assert plan[0]["body"]["instructions"] == long  # the body is whole
    batch = apply(tenant, lines)
    row = results(tenant, batch["id"])[0]
    assert row["changes"]["instructions"] == {"from": None, "to": long}  # never cut
    now = tenant.request("GET", f"/v1/assistants/{row['body']['id']}").json()
    assert now["instructions"] == long


def test_a_line_may_name_an_unkeyed_assistant_by_its_id(tenant: Tenant) -> None:
    made = tenant.create({"model": "gpt-4"}, Prefer="wait=30").json()
    batch = apply(tenant, [{"custom_id": made["id"], "body": {"model": "gpt-4", "name": "x"}}])
    assert counts(batch)["updated"] == 1
    assert tenant.request("GET", f"/v1/assistants/{made['id']}").json()["name"] == "x"


def test_prune_deletes_only_keyed_assistants_left_out(stack: Stack, tenant: Tenant) -> None:
    unkeyed = tenant.create({"model": "gpt-4"}, Prefer="wait=30").json()
    lines = manifest(20)
    apply(tenant, lines)
    kept = lines[:15]

    plan = dry_run(tenant, kept, "&mode=apply&prune=true")
    assert [line["action"] for line in plan] == ["unchanged"] * 15 + ["delete"] * 5
    assert len(stored(stack, tenant)) == 21  # the dry run deleted nothing

    batch = apply(tenant, kept, "&prune=true")
    assert counts(batch) == {
        "total": 15, "completed": 15, "failed": 0,
        "created": 0, "updated": 0, "unchanged": 15, "deleted": 5,
    }  # fmt: skip
    rows = results(tenant, batch["id"])
    assert [row["custom_id"] for row in rows[15:]] == [f"k{i}" for i in range(15, 20)]
    assert all(row["job_id"] is None and row["action"] == "deleted" for row in rows[15:])
    keys = sorted(doc.get("provisioning_key") or doc["id"] for doc in stored(stack, tenant))
    assert keys == sorted([unkeyed["id"], *(f"k{i}" for i in range(15))])
    # A deleted assistant's key is free again.
    again = apply(tenant, lines)
    assert counts(again)["created"] == 5


def test_dry_run_of_each_case_creates_nothing(stack: Stack, tenant: Tenant) -> None:
    lines = manifest(10)
    lines[4]["body"] = {"model": "gpt-4", "bogus": 1}
    plan = dry_run(tenant, lines)
    assert stored(stack, tenant) == []
    assert [line["action"] for line in plan].count("create") == 9
    assert plan[4]["action"] == "invalid"
    assert plan[4]["status_code"] == 422
    assert plan[4]["body"]["detail"][0]["loc"] == ["body", "bogus"]
    assert plan[0]["body"]["name"] == "n0"
    assert plan[0]["body"]["id"] is None

    batch = apply(tenant, lines)
    assert counts(batch)["created"] == 9
    assert counts(batch)["failed"] == 1
    worker_detail = results(tenant, batch["id"])[4]["body"]
    assert worker_detail == plan[4]["body"]  # one validation code path

    before = sorted((str(doc["_id"]), doc["name"]) for doc in stored(stack, tenant))
    lines[2]["body"] = {"model": "gpt-4", "name": "renamed"}
    plan = dry_run(tenant, lines)
    assert plan[2]["action"] == "update"
    assert plan[2]["changes"] == {
        "name": {"from": "n2", "to": "renamed"},
        "metadata.team": {"from": "a", "to": None},
    }
    assert plan[2]["body"]["name"] == "renamed"
    assert plan[3]["action"] == "unchanged"
    assert sorted((str(doc["_id"]), doc["name"]) for doc in stored(stack, tenant)) == before

    single = tenant.request("POST", "/v1/assistants?dry_run=true", json={"model": "gpt-4"})
    assert single.status_code == 200
    assert json.loads(single.text)["action"] == "create"
    # Written as a batch's plan lines are: compact, UTF-8.
    compact = json.dumps(json.loads(single.text), separators=(",", ":"), ensure_ascii=False)
    assert single.text == compact + "\n"
    bad = tenant.request("POST", "/v1/assistants?dry_run=true", json={"name": 5}).json()
    assert bad["action"] == "invalid"
    assert [entry["type"] for entry in bad["body"]["detail"]] == ["missing", "string_type"]

    create_mode = dry_run(tenant, [{"body": {"model": "gpt-4"}}], "")
    assert create_mode[0]["action"] == "create"
    assert len(stored(stack, tenant)) == 9
    store = stack.db
    assert store.jobs.count_documents({"tenant": tenant.name, "batch_id": {"$exists": False}}) == 0


def test_dry_run_structural_errors_answer_as_without_it(tenant: Tenant) -> None:
    bad = jsonl([{"custom_id": "a", "body": {}}, {"custom_id": "a", "body": {}}, {"body": {}}])
    for query in ("mode=apply", "mode=create"):
        plain = submit(tenant, bad) if query == "mode=create" else None
        real = tenant.request(
            "POST", f"/v1/batches?{query}", data=bad, headers={"Content-Type": NDJSON}
        )
        dry = tenant.request(
            "POST", f"/v1/batches?{query}&dry_run=true", data=bad, headers={"Content-Type": NDJSON}
        )
        assert real.status_code == dry.status_code == 422
        assert real.json() == dry.json()
        if plain is not None:
            assert plain.json() == real.json()
    refused = tenant.request(
        "POST", "/v1/batches?mode=apply", data=bad, headers={"Content-Type": NDJSON}
    ).json()["detail"]
    assert {"type": "missing", "loc": ["body", 2, "custom_id"]}.items() <= refused[-1].items()


def test_export_then_apply_is_all_unchanged(tenant: Tenant, other_tenant: Tenant) -> None:
    apply(tenant, manifest(12))
    tenant.create(
        {"model": "gpt-4", "tools": [{"type": "function", "function": {"name": "f"}}]},
        Prefer="wait=30",
    )
    other_tenant.create({"model": "gpt-4"}, Prefer="wait=30")
    response = tenant.request("GET", "/v1/assistants/export", stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(NDJSON)
    lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 13
    assert [line["custom_id"] for line in lines[:12]] == [f"k{i}" for i in range(12)]
    assert lines[12]["custom_id"].startswith("asst_")
    batch = apply(tenant, lines)
    assert counts(batch)["unchanged"] == 13
    assert dry_run(tenant, lines)[0]["action"] == "unchanged"


def test_two_concurrent_applies_of_one_manifest_make_no_duplicates(
    stack: Stack, tenant: Tenant
) -> None:
    lines = manifest(1200)
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda _: apply(tenant, lines), range(2)))
    docs = stored(stack, tenant)
    assert len(docs) == 1200
    assert len({doc["provisioning_key"] for doc in docs}) == 1200
    created = sum(counts(batch)["created"] for batch in batches)
    unchanged = sum(counts(batch)["unchanged"] for batch in batches)
    assert created == 1200
    assert unchanged == 1200
    assert all(counts(batch)["failed"] == 0 for batch in batches)


def test_apply_racing_a_modify_is_serialized(tenant: Tenant) -> None:
    apply(tenant, manifest(3))
    target = results(tenant, apply(tenant, manifest(3))["id"])[1]["body"]["id"]
    response = tenant.request(
        "POST",
        "/v1/batches?mode=apply",
        data=jsonl([{"custom_id": "k1", "body": {"model": "gpt-4", "name": "from-apply"}}]),
        headers={"Content-Type": NDJSON},
    )
    modify = tenant.request(
        "POST", f"/v1/assistants/{target}", json={"description": "from-modify"}
    ).json()
    batch = finished_batch(tenant, response.json()["id"])
    job = tenant.wait_job(modify["id"])
    row = results(tenant, batch["id"])[0]
    final = tenant.request("GET", f"/v1/assistants/{target}").json()
    # Accepted first, the apply applies first; the modify's result shows both.
    assert row["action"] == "updated"
    assert row["body"]["description"] is None
    assert job["result"]["body"] == final
    assert (final["name"], final["description"]) == ("from-apply", "from-modify")


@pytest.fixture
def own(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    with running_stack(servers, logs_dir) as deployment:
        yield deployment


def test_worker_killed_mid_apply_applies_every_key_once(own: Stack) -> None:
    tenant = own.new_tenant()
    lines = manifest(3000)
    apply(tenant, lines[:1000])
    for line in lines[:500]:
        line["body"]["name"] += "-v2"
    response = tenant.request(
        "POST", "/v1/batches?mode=apply", data=jsonl(lines), headers={"Content-Type": NDJSON}
    )
    assert response.status_code == 202

    def mid_work() -> bool:
        store = own.db
        query = {"tenant": tenant.name, "batch_id": response.json()["id"]}
        done = store.jobs.count_documents({**query, "status": "done"})
        claimed = store.jobs.count_documents({**query, "status": "in_progress"})
        return bool(done and claimed)

    wait_until(mid_work, interval=0.02)
    own.kill("worker")
    own.start_worker("worker2")
    batch = finished_batch(tenant, response.json()["id"], timeout=180)
    assert counts(batch) == {
        "total": 3000, "completed": 3000, "failed": 0,
        "created": 2000, "updated": 500, "unchanged": 500, "deleted": 0,
    }  # fmt: skip
    docs = stored(own, tenant)
    assert sorted(doc["provisioning_key"] for doc in docs) == sorted(f"k{i}" for i in range(3000))
    names = {doc["provisioning_key"]: doc["name"] for doc in docs}
    assert names["k1"] == "n1-v2"
    assert names["k700"] == "n700"


def test_unchanged_lines_are_answered_at_the_edge_after_earlier_changes(paused: Local) -> None:
    tenant = paused.new_tenant()
    lines = manifest(1200)  # three chunks
    with paused.worker.running():
        first = apply(tenant, lines)
    target = results(tenant, first["id"])[700]["body"]["id"]
    # From here on, nothing processes jobs.

    # Every line unchanged: the edge answers the batch itself.
    again = apply(tenant, lines)
    assert counts(again)["unchanged"] == 1200
    rows = results(tenant, again["id"])
    assert {row["action"] for row in rows} == {"unchanged"}
    assert rows[700]["body"] == tenant.request("GET", f"/v1/assistants/{target}").json()
    job = tenant.request("GET", f"/v1/jobs/{rows[700]['job_id']}").json()
    assert (job["status"], job["result"]["body"]["id"]) == ("succeeded", target)

    # A modify accepted before the apply and not done yet: the chunk naming its
    # assistant waits for the workers, which apply the modify first.
    modify = tenant.request(
        "POST", f"/v1/assistants/{target}", json={"name": "changed"}, headers={"Prefer": "wait=0"}
    )
    assert modify.status_code == 202, modify.text
    response = tenant.request(
        "POST", "/v1/batches?mode=apply", data=jsonl(lines), headers={"Content-Type": NDJSON}
    )
    assert response.status_code == 202, response.text
    waiting = tenant.request("GET", f"/v1/batches/{response.json()['id']}").json()
    assert waiting["status"] == "in_progress"
    assert counts(waiting)["unchanged"] == 700  # the two other chunks
    # The modify, then the chunk that waited for it, and what they queued.
    assert paused.worker.run_queued() >= 2
    batch = finished_batch(tenant, response.json()["id"])
    assert counts(batch)["unchanged"] == 1199
    assert counts(batch)["updated"] == 1
    assert results(tenant, batch["id"])[700]["action"] == "updated"
    assert tenant.wait_job(modify.json()["id"])["result"]["body"]["name"] == "changed"
    assert tenant.request("GET", f"/v1/assistants/{target}").json()["name"] == "n700"


def test_a_line_after_another_naming_its_assistant_applies_after_it(tenant: Tenant) -> None:
    lines = manifest(600)  # two chunks
    first = apply(tenant, lines)
    target = results(tenant, first["id"])[550]["body"]["id"]
    # The first chunk changes k550's assistant by its id; the second names it by
    # its key, as it is now. In input order the key's line comes last and wins.
    lines[0] = {"custom_id": target, "body": {"model": "gpt-4", "name": "via-id"}}
    batch = apply(tenant, lines)
    rows = results(tenant, batch["id"])
    assert (rows[0]["action"], rows[550]["action"]) == ("updated", "updated")
    assert tenant.request("GET", f"/v1/assistants/{target}").json()["name"] == "n550"


def test_a_line_whose_assistant_is_deleted_between_the_workers_reads_is_404(
    local: Local,
) -> None:
    """The race a concurrent DELETE makes: the chunk read the assistant (projected,
    to compare by content hash), then it was deleted before the whole document was
    read. The line answers 404 and the chunk goes on; it does not crash."""
    tenant = local.new_tenant()
    made = tenant.create({"model": "gpt-4", "name": "plain"}, Prefer="wait=30").json()
    store = local.db
    projected = store.assistants.find_one({"id": made["id"]}, assistants.APPLY_VIEW)
    assert projected is not None and "model" not in projected
    assert tenant.request("DELETE", f"/v1/assistants/{made['id']}").status_code == 200
    body = {"model": "gpt-4", "name": "renamed"}
    unit = new_unit(
        unit_id="unit_race",
        tenant=tenant.name,
        items=[{"id": "job_race", "custom_id": made["id"], "body": json.dumps(body)}],
        now=int(time.time()),
    )
    request = validate_create(body)
    assert not isinstance(request, list)
    outcomes: applying.Outcomes = {"unit_race": [(0, None)]}
    actions: applying.Actions = {}
    applying._update(local.rt, [((unit, 0, request), projected)], outcomes, actions)
    assert outcomes["unit_race"] == [(404, {"detail": "No assistant found"})]
    assert actions["unit_race"] == [None]
    assert store.assistants.count_documents({"id": made["id"]}) == 0


def test_a_line_naming_an_id_no_assistant_has_is_404_and_creates_nothing(
    stack: Stack, tenant: Tenant
) -> None:
    kept = apply(tenant, manifest(2))
    gone_id = results(tenant, kept["id"])[1]["body"]["id"]
    assert tenant.request("DELETE", f"/v1/assistants/{gone_id}").status_code == 200
    never = "asst_" + "Z" * 24
    lines = [
        {"custom_id": gone_id, "body": {"model": "gpt-4"}},
        {"custom_id": never, "body": {"model": "gpt-4"}},
        {"custom_id": "k0", "body": {"model": "gpt-4", "name": "n0", "metadata": {"team": "a"}}},
    ]
    plan = dry_run(tenant, lines)
    assert [(line["action"], line["status_code"]) for line in plan[:2]] == [("invalid", 404)] * 2
    batch = apply(tenant, lines)
    rows = results(tenant, batch["id"])
    assert [row["status_code"] for row in rows] == [404, 404, 200]
    assert rows[2]["action"] == "unchanged"
    # No assistant is keyed with an id string.
    keys = {doc.get("provisioning_key") for doc in stored(stack, tenant)}
    assert keys == {"k0"}


def plan_with_etag(tenant: Tenant, lines: list[Any]) -> tuple[list[dict[str, Any]], str]:
    response = tenant.request(
        "POST",
        "/v1/batches?mode=apply&dry_run=true",
        data=jsonl(lines),
        headers={"Content-Type": NDJSON},
    )
    assert response.status_code == 200, response.text
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) == 66
    return [json.loads(line) for line in response.text.splitlines()], etag


def apply_if_match(tenant: Tenant, lines: list[Any], etag: str, key: str | None = None) -> Any:
    headers = {"Content-Type": NDJSON, "If-Match": etag}
    if key is not None:
        headers["Idempotency-Key"] = key
    return tenant.request("POST", "/v1/batches?mode=apply", data=jsonl(lines), headers=headers)


def modify(tenant: Tenant, assistant_id: str, change: dict[str, Any]) -> None:
    response = tenant.request("POST", f"/v1/assistants/{assistant_id}", json=change)
    assert response.status_code in (200, 202), response.text
    wait_until(
        lambda: all(
            tenant.request("GET", f"/v1/assistants/{assistant_id}").json()[name] == value
            for name, value in change.items()
        )
    )


def test_an_apply_under_if_match_applies_only_the_plan_it_names(
    stack: Stack, tenant: Tenant
) -> None:
    lines = manifest(5)
    ids = {
        row["custom_id"]: row["body"]["id"] for row in results(tenant, apply(tenant, lines)["id"])
    }
    lines[1]["body"]["name"] = "renamed"
    lines.append({"custom_id": "k9", "body": {"model": "gpt-4"}})
    plan, etag = plan_with_etag(tenant, lines)
    assert [line["action"] for line in plan] == [
        "unchanged", "update", "unchanged", "unchanged", "unchanged", "create",
    ]  # fmt: skip
    assert plan_with_etag(tenant, lines)[1] == etag  # the same state plans the same

    # Another change of a named assistant: the plan no longer holds.
    modify(tenant, ids["k2"], {"name": "changed elsewhere"})
    before = sorted((doc["provisioning_key"], doc["name"]) for doc in stored(stack, tenant))
    refused = apply_if_match(tenant, lines, etag)
    assert refused.status_code == 412, refused.text
    detail = refused.json()["detail"]
    assert [(entry["loc"], entry["custom_id"], entry["action"]) for entry in detail] == [
        (["body", 2], "k2", "update")
    ]
    assert sorted((doc["provisioning_key"], doc["name"]) for doc in stored(stack, tenant)) == before
    assert tenant.request("GET", "/v1/batches").json()["data"][0]["request_counts"]["total"] == 5

    # Planned again, it applies: exactly the planned lines.
    plan, etag = plan_with_etag(tenant, lines)
    accepted = apply_if_match(tenant, lines, etag, key="reviewed")
    assert accepted.status_code == 202, accepted.text
    batch = finished_batch(tenant, accepted.json()["id"])
    # Its plan no longer holds (it was applied), but a retry with its key replays.
    retried = apply_if_match(tenant, lines, etag, key="reviewed")
    assert retried.status_code == 202, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == batch["id"]
    done = {"update": "updated", "create": "created", "unchanged": "unchanged"}
    rows = results(tenant, batch["id"])
    assert [row["action"] for row in rows] == [done[line["action"]] for line in plan]
    assert rows[2]["changes"] == plan[2]["changes"]
    names = {doc["provisioning_key"]: doc["name"] for doc in stored(stack, tenant)}
    assert (names["k1"], names["k2"], names["k9"]) == ("renamed", "n2", None)


def test_if_match_that_names_no_plan_is_refused_clearly(tenant: Tenant) -> None:
    lines = manifest(2)
    _, etag = plan_with_etag(tenant, lines)
    bad = {
        "*": 400,
        'W/"' + "0" * 64 + '"': 400,
        "0" * 64: 400,
        f"{etag}, {etag}": 400,
    }
    for value, code in bad.items():
        response = apply_if_match(tenant, lines, value)
        assert response.status_code == code, (value, response.text)
        assert "If-Match" in response.json()["detail"]
    unknown = apply_if_match(tenant, lines, '"' + "0" * 64 + '"')
    assert unknown.status_code == 412
    assert unknown.json()["detail"][0]["loc"] == ["header", "If-Match"]
    for query, headers in (
        ("mode=apply&dry_run=true", {"If-Match": etag}),
        ("mode=create", {"If-Match": etag}),
        ("mode=apply", {"If-None-Match": "*"}),
    ):
        response = tenant.request(
            "POST",
            f"/v1/batches?{query}",
            data=jsonl(lines),
            headers={"Content-Type": NDJSON, **headers},
        )
        assert response.status_code == 400, (query, response.text)
    assert tenant.request("GET", "/v1/batches").json()["data"] == []


def test_a_line_whose_assistant_changes_after_the_check_fails_412(paused: Local) -> None:
    tenant = paused.new_tenant()
    lines = manifest(3)
    with paused.worker.running():
        first = apply(tenant, lines)
    target = results(tenant, first["id"])[0]["body"]["id"]
    # A modify accepted and not run yet: the plan (and the edge's check) see the
    # assistant as it is now; the worker, which runs the modify first, does not.
    changed = tenant.request("POST", f"/v1/assistants/{target}", json={"name": "meanwhile"})
    assert changed.status_code == 202, changed.text
    lines[0]["body"]["name"] = "planned"
    lines[1]["body"]["name"] = "planned too"
    _, etag = plan_with_etag(tenant, lines)
    accepted = apply_if_match(tenant, lines, etag)
    assert accepted.status_code == 202, accepted.text
    with paused.worker.running():
        batch = finished_batch(tenant, accepted.json()["id"])
    rows = results(tenant, batch["id"])
    assert (rows[0]["status_code"], rows[0]["action"]) == (412, None)
    assert "changed since the plan" in rows[0]["body"]["detail"]
    assert (rows[1]["action"], rows[2]["action"]) == ("updated", "unchanged")
    assert tenant.request("GET", f"/v1/assistants/{target}").json()["name"] == "meanwhile"


def test_plan_edge_and_worker_make_one_decision(stack: Stack, tenant: Tenant) -> None:
    lines = manifest(3)
    apply(tenant, lines)
    # A content hash that is not the content's (one written by an earlier hash
    # scheme, say): the content decides, in the plan as in the apply.
    stack.db.assistants.update_one(
        {"tenant": tenant.name, "provisioning_key": "k1"}, {"$set": {"content_hash": "stale"}}
    )
    lines[2]["body"]["name"] = "renamed"
    plan = dry_run(tenant, lines)
    assert [line["action"] for line in plan] == ["unchanged", "unchanged", "update"]
    batch = apply(tenant, lines)
    done = {"update": "updated", "unchanged": "unchanged"}
    rows = results(tenant, batch["id"])
    assert [row["action"] for row in rows] == [done[line["action"]] for line in plan]
    assert rows[2]["changes"] == plan[2]["changes"]


def test_keys_stored_before_key_refs_are_found_after_the_index_moves(paused: Local) -> None:
    """A store whose keys were held by the old per-tenant partial index: the
    next start gives each keyed assistant its `key_ref` and drops that index, and
    a re-apply finds every key (nothing made twice)."""
    tenant, other = paused.new_tenant(), paused.new_tenant("7:x/")
    with paused.worker.running():
        apply(tenant, manifest(30))
        apply(other, manifest(3))
    db = paused.db
    db.assistants.drop_index("key_ref_1")
    db.assistants.update_many({}, {"$unset": {"key_ref": ""}})
    db.assistants.create_index(
        [("tenant", 1), ("provisioning_key", 1)],
        unique=True,
        partialFilterExpression={"provisioning_key": {"$type": "string"}},
    )
    ensure_indexes(db)
    ensure_indexes(db)  # a second process starting: nothing left to do
    indexes = db.assistants.index_information()
    assert "tenant_1_provisioning_key_1" not in indexes
    assert indexes["key_ref_1"]["unique"] and indexes["key_ref_1"]["sparse"]
    for doc in db.assistants.find():
        assert doc["key_ref"] == key_ref(doc["tenant"], doc["provisioning_key"])
    with paused.worker.running():
        again = apply(tenant, manifest(30))
        mine = apply(other, manifest(3, prefix="k") + manifest(1, prefix="new"))
    assert counts(again)["unchanged"] == 30
    assert (counts(mine)["unchanged"], counts(mine)["created"]) == (3, 1)
    assert db.assistants.count_documents({}) == 34


def test_an_apply_racing_deletes_and_modifies_of_its_assistants_answers_every_line(
    local: Local,
) -> None:
    """An apply naming 60 assistants by id while another client deletes them one by
    one and a third modifies them: every line, delete and modify is answered (200
    or 404), no unit runs past its lease or twice, and nothing deleted comes back."""
    tenant = local.new_tenant()
    made = submit(tenant, jsonl([{"body": {"model": "gpt-4", "name": f"a{i}"}} for i in range(60)]))
    ids = [
        row["body"]["id"]
        for row in results(tenant, finished_batch(tenant, made.json()["id"])["id"])
    ]
    lines = [{"custom_id": one, "body": {"model": "gpt-4", "name": "applied"}} for one in ids]

    def deletes() -> list[int]:
        return [tenant.request("DELETE", f"/v1/assistants/{one}").status_code for one in ids]

    def modifies() -> list[Any]:
        return [
            tenant.request("POST", f"/v1/assistants/{one}", json={"name": "modified"})
            for one in ids[::2]
        ]

    with ThreadPoolExecutor(max_workers=3) as pool:
        applied = pool.submit(apply, tenant, lines)
        deleted, modified = pool.submit(deletes), pool.submit(modifies)
        batch, delete_codes, modify_answers = applied.result(), deleted.result(), modified.result()

    rows = results(tenant, batch["id"])
    assert len(rows) == 60
    assert {row["status_code"] for row in rows} <= {200, 404}, rows
    assert set(delete_codes) <= {200, 202, 404}, delete_codes
    for answer in modify_answers:
        if answer.status_code == 404:  # already deleted when it came
            continue
        assert answer.status_code in (200, 202), answer.text
        job = tenant.wait_job(answer.json()["id"]) if answer.status_code == 202 else None
        assert job is None or job["result"]["status_code"] in (200, 404), job
    wait_until(
        lambda: (
            local.db.jobs.count_documents({"tenant": tenant.name, "status": {"$ne": "done"}}) == 0
        )
    )
    assert local.db.jobs.count_documents({"tenant": tenant.name, "attempts": {"$gt": 1}}) == 0
    # Every delete answered 200 or 202 took effect: nothing deleted is back.
    for one, code in zip(ids, delete_codes, strict=True):
        if code in (200, 202):
            assert tenant.request("GET", f"/v1/assistants/{one}").status_code == 404, one
    assert local.db.assistants.count_documents({"tenant": tenant.name}) == 0
