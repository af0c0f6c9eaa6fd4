"""The assistant document and object.

`tools` and `metadata` are user-controlled trees whose keys may hold anything
JSON allows ("$where", "a.b", NUL), which BSON keys cannot all hold; they are
stored as JSON text, so every value the schema allows round-trips exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bson import ObjectId

from worker.domain.documents import Doc
from worker.domain.ids import new_id
from worker.domain.schema import AssistantCreate, tools_as_given


def object_id_for(job_id: str, job_created_at: int) -> ObjectId:
    """The assistant's `_id`, fixed by its job: the idempotency key of processing.

    A redelivered job derives the same `_id`, so its insert collides with the
    assistant made before and finds it; no extra unique index is needed. The
    first four bytes are a timestamp, as in every ObjectId.
    """
    digest = hashlib.sha256(job_id.encode()).digest()
    return ObjectId(job_created_at.to_bytes(4, "big") + digest[:8])


def new_document(
    request: AssistantCreate, *, tenant: str, job_id: str, job_created_at: int, now: int
) -> Doc:
    return {
        "_id": object_id_for(job_id, job_created_at),
        "id": new_id("asst_"),
        "tenant": tenant,
        "job_id": job_id,
        "created_at": now,
        "name": request.name,
        "description": request.description,
        "model": request.model,
        "instructions": request.instructions,
        "tools_json": json.dumps(tools_as_given(request), ensure_ascii=False),
        "file_ids": request.file_ids,
        "metadata_json": json.dumps(request.metadata or {}, ensure_ascii=False),
    }


def reference(doc: Doc) -> dict[str, Any]:
    """What a job's result keeps of its assistant; the rest is in the request."""
    return {"_id": str(doc["_id"]), "id": doc["id"], "created_at": doc["created_at"]}


def public_from_request(body: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The assistant object rebuilt from a valid request and its reference.

    Validation keeps valid values as sent (no coercion of these types, tools
    as given), so this equals `public()` of the document that was inserted.
    """
    return {
        "_id": ref["_id"],
        "id": ref["id"],
        "object": "assistant",
        "created_at": ref["created_at"],
        "name": body.get("name"),
        "description": body.get("description"),
        "model": body["model"],
        "instructions": body.get("instructions"),
        "tools": body.get("tools") or [],
        "file_ids": body.get("file_ids") or [],
        "metadata": body.get("metadata") or {},
    }


def public(doc: Doc) -> dict[str, Any]:
    """The assistant object of the origin API."""
    return {
        "_id": str(doc["_id"]),
        "id": doc["id"],
        "object": "assistant",
        "created_at": doc["created_at"],
        "name": doc.get("name"),
        "description": doc.get("description"),
        "model": doc["model"],
        "instructions": doc.get("instructions"),
        "tools": json.loads(doc["tools_json"]),
        "file_ids": list(doc.get("file_ids") or []),
        "metadata": json.loads(doc["metadata_json"]),
    }
