"""Assistants are stored as the origin API stored them: documents whose `tools` is
an array and `metadata` an object, read here straight from MongoDB with pymongo."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bson import ObjectId

from tests.stack import Stack, Tenant

NUL = "\u0000"


def created(tenant: Tenant, body: dict[str, Any]) -> dict[str, Any]:
    response = tenant.create(body, Prefer="wait=30")
    assert response.status_code == 200, response.text
    assistant: dict[str, Any] = response.json()
    return assistant


def stored(stack: Stack, assistant_id: str) -> dict[str, Any]:
    store = stack.db
    doc = store.assistants.find_one({"id": assistant_id})
    assert doc is not None
    return doc


def test_tools_are_an_array_and_metadata_an_object_in_the_store(
    stack: Stack, tenant: Tenant
) -> None:
    body = {
        "model": "gpt-4",
        "name": "Helper",
        "instructions": "be brief",
        "tools": [
            {"type": "retrieval"},
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"$ref": "#/defs/a.b", "a.b": {"$where": [1, None]}},
                },
            },
        ],
        "file_ids": ["file-1"],
        "metadata": {"team": "sales", "$where": "1", "a.b": "2", "": "3", "$": "4"},
    }
    assistant = created(tenant, body)
    doc = stored(stack, assistant["id"])
    assert isinstance(doc["_id"], ObjectId) and str(doc["_id"]) == assistant["_id"]
    assert doc["tools"] == body["tools"] and isinstance(doc["tools"], list)
    assert doc["metadata"] == body["metadata"] and isinstance(doc["metadata"], dict)
    assert doc["file_ids"] == ["file-1"]
    assert (doc["model"], doc["name"], doc["instructions"]) == ("gpt-4", "Helper", "be brief")
    assert doc["description"] is None and doc["created_at"] == assistant["created_at"]
    assert "tools_json" not in doc and "metadata_json" not in doc
    assert tenant.request("GET", f"/v1/assistants/{assistant['id']}").json() == assistant


def test_metadata_can_be_queried_as_a_document(stack: Stack, tenant: Tenant) -> None:
    sales = created(tenant, {"model": "m", "metadata": {"team": "sales"}})
    created(tenant, {"model": "m", "metadata": {"team": "support"}})
    store = stack.db
    found = store.assistants.find({"tenant": tenant.name, "metadata.team": "sales"})
    assert [doc["id"] for doc in found] == [sales["id"]]


def test_a_tree_bson_cannot_hold_is_kept_as_json_text_and_read_back_exactly(
    stack: Stack, tenant: Tenant
) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {f"k{NUL}": NUL}}},
    ]
    dbref_shaped = [
        {"type": "function", "function": {"name": "g", "parameters": {"$ref": "x", "$id": 1}}}
    ]
    metadata = {f"a{NUL}b": "v", NUL: "", "plain": f"x{NUL}"}
    first = created(tenant, {"model": "m", "tools": tools, "metadata": metadata})
    assert first["tools"] == tools and first["metadata"] == metadata
    doc = stored(stack, first["id"])
    # Only the trees that need it are text; a string where an array or object belongs.
    assert json.loads(doc["tools"]) == tools and json.loads(doc["metadata"]) == metadata
    assert tenant.request("GET", f"/v1/assistants/{first['id']}").json() == first

    second = created(tenant, {"model": "m", "tools": dbref_shaped, "metadata": {"n": f"{NUL}"}})
    doc = stored(stack, second["id"])
    assert isinstance(doc["tools"], str) and doc["metadata"] == {"n": NUL}
    assert tenant.request("GET", f"/v1/assistants/{second['id']}").json() == second
    listed = tenant.request("GET", "/v1/assistants", params={"order": "asc"}).json()["data"]
    assert listed == [first, second]


def test_documents_of_the_earlier_shape_are_read_and_migrated(deployment: Stack) -> None:
    """Documents stored as `tools_json` / `metadata_json` text read the same, and
    `assistant-ingest migrate` rewrites them once: running it again changes nothing."""
    stack = deployment
    tenant = stack.new_tenant()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a.b": 1}}}]
    legacy = [
        {
            "_id": ObjectId(),
            "id": f"asst_legacy{i:020d}{tenant.name[-8:]}",
            "tenant": tenant.name,
            "job_id": f"job_legacy{i}",
            "created_at": 1_700_000_000 + i,
            "name": f"old{i}",
            "description": None,
            "model": "m",
            "instructions": None,
            "tools_json": json.dumps(tools),
            "file_ids": [],
            "metadata_json": json.dumps({"$where": "1"} if i else {f"k{NUL}": "v"}),
        }
        for i in range(3)
    ]
    store = stack.db
    store.assistants.insert_many(legacy)
    before = [tenant.request("GET", f"/v1/assistants/{doc['id']}").json() for doc in legacy]
    assert [a["tools"] for a in before] == [tools] * 3
    assert [a["metadata"] for a in before] == [
        {f"k{NUL}": "v"},
        {"$where": "1"},
        {"$where": "1"},
    ]

    env = stack.env
    run = [sys.executable, "-m", "cli.main", "migrate", "--batch-size", "2"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["rewritten"] >= 3
    docs = {doc["id"]: doc for doc in store.assistants.find({"tenant": tenant.name})}
    for doc in docs.values():
        assert "tools_json" not in doc and "metadata_json" not in doc
        assert doc["tools"] == tools
    assert docs[legacy[1]["id"]]["metadata"] == {"$where": "1"}
    assert json.loads(docs[legacy[0]["id"]]["metadata"]) == {f"k{NUL}": "v"}
    after = [tenant.request("GET", f"/v1/assistants/{doc['id']}").json() for doc in legacy]
    assert after == before

    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"rewritten": 0}
