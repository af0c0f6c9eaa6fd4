"""Dry runs: what a batch (or a create) would do, computed now and changing nothing.

Bodies are validated by the workers' own functions (`validate_create`,
`validate_modify`), so a line's 422 detail is the one its job would give.
Lines are planned in groups, with one read of the assistants they name per
group, and yielded as they are planned: memory stays flat in the line count.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

from worker.domain import assistants as assistant_docs
from worker.domain.documents import Doc
from worker.domain.schema import fields_sent, validate_create, validate_modify
from worker.runtime import Runtime
from worker.store import assistants

GROUP = 500
UNSAVED = {"_id": None, "id": None, "created_at": None}
NOT_FOUND = {"detail": "No assistant found"}


class Line(NamedTuple):
    custom_id: str | None
    body_text: str
    op: str | None = None  # None: a create; "modify", "delete" or "apply"
    target: str | None = None


def plan(
    rt: Runtime, tenant: str, lines: Iterable[Line], *, prune_except: Container[str] | None = None
) -> Iterator[Doc]:
    """One plan line per request, in input order; then, with `prune_except` (the
    names the manifest gives), one `delete` line per keyed assistant it leaves out."""
    source = iter(lines)
    keyed: dict[str, str] | None = None  # the tenant's keys, read once if needed
    while group := list(islice(source, GROUP)):
        names = [line.custom_id for line in group if line.op == "apply" and line.custom_id]
        if names and keyed is None:
            keyed = assistants.keyed_ids(rt.store, tenant)
        named = assistants.find_named(rt.store, tenant, names, keyed)
        targets = [line.target for line in group if line.target is not None]
        by_id = assistants.find_mine(rt.store, tenant, targets)
        for line in group:
            yield _plan_line(rt, line, named if line.op == "apply" else by_id)
    if prune_except is not None:
        for doc in assistants.iter_keyed(rt.store, tenant):
            key = doc[assistant_docs.KEY]
            if key in prune_except or doc["id"] in prune_except:
                continue
            yield {
                "custom_id": key,
                "action": "delete",
                "status_code": 200,
                "body": assistant_docs.deleted(doc["id"]),
            }


def _name(line: Line) -> str | None:
    return line.custom_id if line.op == "apply" else line.target


def _plan_line(rt: Runtime, line: Line, named: dict[str, Doc]) -> Doc:
    models = rt.settings.models
    body: Any = json.loads(line.body_text)
    name = _name(line)
    doc = named.get(name) if name is not None else None
    if line.op == "delete":
        if doc is None:
            return _answer(line, "invalid", 404, NOT_FOUND)
        return _answer(line, "delete", 200, assistant_docs.deleted(doc["id"]))
    if line.op == "modify":
        modify = validate_modify(body, models)
        if isinstance(modify, list):
            return _answer(line, "invalid", 422, {"detail": modify})
        if doc is None:
            return _answer(line, "invalid", 404, NOT_FOUND)
        return _change(line, doc, {**doc, **assistant_docs.changes(fields_sent(modify))})
    create = validate_create(body, models)
    if isinstance(create, list):
        return _answer(line, "invalid", 422, {"detail": create})
    if doc is None:
        return _answer(line, "create", 200, assistant_docs.public_from_request(body, UNSAVED))
    return _change(line, doc, {**doc, **assistant_docs.content(create)})


def _change(line: Line, doc: Doc, after: Doc) -> Doc:
    state = assistant_docs.public(after)
    changed = assistant_docs.differences(doc, state)
    if not changed:
        return _answer(line, "unchanged", 200, state)
    return {**_answer(line, "update", 200, state), "changes": changed}


def _answer(line: Line, action: str, code: int, body: Any) -> Doc:
    return {"custom_id": line.custom_id, "action": action, "status_code": code, "body": body}


def plan_create(rt: Runtime, body_text: str) -> Doc:
    """The dry run of a single create."""
    return _plan_line(rt, Line(None, body_text), {})
