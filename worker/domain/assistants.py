"""The assistant document and object.

An assistant is stored as the origin API stored it: `tools` an array of
objects, `metadata` an object, every field native, so whatever reads the
collection (the origin server, mongosh, `find({"metadata.team": "sales"})`)
finds arrays and objects where they belong. MongoDB (5.0 and later) keeps
keys such as "$where", "a.b", "" and "$" as they are. Two trees cannot be
kept as they are: one with a key holding NUL (BSON keys are C strings), and
one with an object shaped like a DBRef (`$ref` beside `$id`), which drivers
read back as a DBRef. Such a field alone is stored as its JSON text: a string
where an array or an object belongs, which no valid value is, so reads can
tell the two apart and give every value back exactly.

Documents stored before this shape keep `tools_json` / `metadata_json`; reads
take both shapes, and `assistant-ingest migrate` rewrites them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from typing import Any

from bson import ObjectId

from worker.domain.documents import Doc
from worker.domain.ids import new_id
from worker.domain.schema import AssistantCreate, tools_as_given

# ObjectId time: 4 bytes of seconds and 3 of the fraction, in 2**-24 s ticks.
TICKS_PER_SECOND = 1 << 24
TREES = ("tools", "metadata")
LEGACY = {name: f"{name}_json" for name in TREES}


def object_id_for(job_id: str, accepted_at: float, offset: int = 0) -> ObjectId:
    """The assistant's `_id`, fixed by its job: the idempotency key of processing.

    A redelivered job derives the same `_id`, so its insert collides with the
    assistant made before and finds it. The first seven bytes are the time
    the job was accepted (seconds, then the fraction in 2**-24 s ticks, plus
    `offset` ticks: a batch line's place in its chunk), so ids sort in
    acceptance order; five bytes of a hash of the job id keep them unique.
    """
    seconds = int(accepted_at)
    ticks = (seconds << 24) + int((accepted_at - seconds) * TICKS_PER_SECOND) + offset
    digest = hashlib.sha256(job_id.encode()).digest()
    return ObjectId(ticks.to_bytes(7, "big") + digest[:5])


def fits_bson(value: Any) -> bool:
    """Whether a JSON tree is stored and read back as it is."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "$ref" in node and "$id" in node:
                return False
            if any("\0" in key for key in node):
                return False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


def storable(tree: Any) -> Any:
    """A user-controlled tree as it is stored: itself, or its JSON text."""
    return tree if fits_bson(tree) else json.dumps(tree, ensure_ascii=False)


def readable(stored: Any) -> Any:
    return json.loads(stored) if isinstance(stored, str) else stored


def tree(doc: Doc, name: str, default: Any) -> Any:
    """`tools` or `metadata` of a stored document, in either shape."""
    if name in doc:
        return readable(doc[name])
    legacy = doc.get(LEGACY[name])
    return json.loads(legacy) if legacy is not None else default


def new_document(
    request: AssistantCreate,
    *,
    tenant: str,
    job_id: str,
    accepted_at: float,
    offset: int = 0,
    now: int,
    key: str | None = None,
) -> Doc:
    doc: Doc = {
        "_id": object_id_for(job_id, accepted_at, offset),
        "id": new_id("asst_"),
        "tenant": tenant,
        "job_id": job_id,
        "created_at": now,
        **content(request),
    }
    if key is not None:
        # Never in the public object: the origin's shape stays as it was.
        doc[KEY] = key
        doc[KEY_REF] = key_ref(tenant, key)
    return doc


# The field holding an assistant's provisioning key, unique per tenant.
KEY = "provisioning_key"
# The key with its tenant in one string (`key_ref`), which a unique sparse
# index holds: unkeyed assistants are not in it, a manifest's keys are looked
# up by it, and a tenant's keyed assistants are one range of it (`key_refs`).
KEY_REF = "key_ref"


def key_ref(tenant: str, key: str) -> str:
    """The tenant's length first, so no tenant and key pair reads as another's."""
    return f"{_key_ref_prefix(tenant)}{key}"


def key_refs(tenant: str) -> tuple[str, str]:
    """The range `[low, high)` holding every key ref of the tenant, and nothing else."""
    low = _key_ref_prefix(tenant)
    return low, low[:-1] + chr(ord(low[-1]) + 1)


def _key_ref_prefix(tenant: str) -> str:
    return f"{len(tenant)}:{tenant}/"


CONTENT = ("name", "description", "model", "instructions", "tools", "file_ids", "metadata")


def content(request: AssistantCreate) -> Doc:
    """The stored fields a create request sets: exactly the body, absent fields
    at their defaults (what an apply line sets an assistant to)."""
    return {
        "name": request.name,
        "description": request.description,
        "model": request.model,
        "instructions": request.instructions,
        "tools": storable(tools_as_given(request)),
        "file_ids": request.file_ids,
        "metadata": storable(request.metadata or {}),
    }


def _canonical(value: Any) -> str:
    # JSON text tells 1, 1.0 and true apart, which Python's == does not.
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def differences(doc: Doc, body: dict[str, Any]) -> list[str]:
    """The fields in which the stored assistant differs from a valid create body
    (the desired state, absent fields at their defaults)."""
    have = public(doc)
    want = public_from_request(body, reference(doc))
    return [name for name in CONTENT if _canonical(have[name]) != _canonical(want[name])]


def field_changes(have: dict[str, Any], want: dict[str, Any]) -> Doc:
    """What an update changes, between two assistant objects: `{field: {"from",
    "to"}}` for each content field that differs, metadata key by key
    (`metadata.<key>`, a removed key going `to` null). Values are whole."""
    found: Doc = {}
    for name in CONTENT:
        old, new = have[name], want[name]
        if _canonical(old) == _canonical(new):
            continue
        if name == "metadata" and isinstance(old, dict) and isinstance(new, dict):
            for key in sorted({*old, *new}):
                before, after = old.get(key), new.get(key)
                if key not in old or key not in new or _canonical(before) != _canonical(after):
                    found[f"metadata.{key}"] = {"from": before, "to": after}
        else:
            found[name] = {"from": old, "to": new}
    return found


# A value of a plan's change longer than this, as JSON text, is cut: shown as
# the start of that text and a marker (`cut_value`). What is applied is whole.
PLAN_VALUE_CHARS = 1000
CUT_MARKER = "…[cut: {more} more characters]"


def cut_value(value: Any, limit: int = PLAN_VALUE_CHARS) -> tuple[Any, bool]:
    """A change's value as a plan shows it, and whether it was cut: a string
    longer than `limit` keeps its first `limit` characters; any other value
    whose JSON text is longer becomes that text's first `limit` characters;
    either ends with CUT_MARKER, which says how many characters were left out."""
    text = value if isinstance(value, str) else _canonical(value)
    if len(text) <= limit:
        return value, False
    return text[:limit] + CUT_MARKER.format(more=len(text) - limit), True


def plan_changes(changes: Doc, limit: int = PLAN_VALUE_CHARS) -> Doc:
    """`field_changes` as a plan shows them: long values cut, each cut change
    marked `"cut": true`."""
    shown: Doc = {}
    for name, change in changes.items():
        before, cut_from = cut_value(change["from"], limit)
        after, cut_to = cut_value(change["to"], limit)
        shown[name] = {"from": before, "to": after}
        if cut_from or cut_to:
            shown[name]["cut"] = True
    return shown


# A hash of the content an apply line set, kept on the assistant so that an
# unchanged line is known without reading the whole document. Any other change
# of the content (a modify) removes it; without it the document is compared.
CONTENT_HASH = "content_hash"


def content_hash(body: dict[str, Any]) -> str:
    """The hash of a valid create body's content, absent fields at their defaults."""
    state = public_from_request(body, {"_id": None, "id": None, "created_at": None})
    return hashlib.sha256(_canonical([state[name] for name in CONTENT]).encode()).hexdigest()


def hashes_as(doc: Doc, body: dict[str, Any]) -> bool:
    """Whether a valid create body is this assistant's content, known from the
    content hash alone (an assistant changed otherwise since has none)."""
    stored = doc.get(CONTENT_HASH)
    return bool(stored) and stored == content_hash(body)


def version(doc: Doc) -> str:
    """The assistant's version as a plan sees it: the hash of its content (the
    content hash an apply stored, else computed), so any change of the content
    is a new version. Not part of the assistant object."""
    stored = doc.get(CONTENT_HASH)
    return str(stored) if stored else content_hash(public(doc))


def decide(doc: Doc | None, body: dict[str, Any]) -> tuple[str, Doc | None]:
    """What an apply line with the valid create body `body` does to the assistant
    it names (`doc`, None for none): `create`, `unchanged` or `update`, with the
    field changes of an update. The one decision the dry run, the edge and the
    workers all make, so a plan and its apply cannot disagree.

    A content hash equal to the body's is `unchanged` without the content; else
    the content decides, and an assistant read without it (`APPLY_VIEW`) is an
    `update` whose changes (None) are known once it is read whole."""
    if doc is None:
        return "create", {}
    if hashes_as(doc, body):
        return "unchanged", {}
    if "model" not in doc:
        return "update", None
    found = field_changes(public(doc), public_from_request(body, reference(doc)))
    return ("update" if found else "unchanged"), found


def left_out(doc: Doc, names: Container[str]) -> bool:
    """Whether a manifest whose lines give `names` leaves this keyed assistant out
    (a line names an assistant by its key, or else by its id): prune deletes it."""
    return doc[KEY] not in names and doc["id"] not in names


def apply_line(doc: Doc) -> Doc:
    """The assistant as a manifest line: its key (else its id) and its create body."""
    current = public(doc)
    return {
        "custom_id": doc.get(KEY) or doc["id"],
        "body": {name: current[name] for name in CONTENT},
    }


def changes(fields: dict[str, Any]) -> Doc:
    """The stored form of the fields a modify sets (metadata null is `{}`)."""
    stored: Doc = {}
    for name, value in fields.items():
        if name == "metadata":
            value = value or {}
        stored[name] = storable(value) if name in TREES else value
    return stored


def migrated(doc: Doc) -> Doc:
    """The native fields of a document stored in the earlier shape."""
    return {
        name: storable(tree(doc, name, default))
        for name, default in (("tools", []), ("metadata", {}))
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
        "tools": tree(doc, "tools", []),
        "file_ids": list(doc.get("file_ids") or []),
        "metadata": tree(doc, "metadata", {}),
    }


def deleted(assistant_id: str) -> dict[str, Any]:
    return {"id": assistant_id, "object": "assistant.deleted", "deleted": True}
