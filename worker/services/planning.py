"""Dry runs: what a batch (or a create) would do, computed now and changing nothing.

Bodies are validated by the workers' own functions (`validate_create`,
`validate_modify`), so a line's 422 detail is the one its job would give.
Lines are planned in groups, with one read of the assistants they name per
group, and yielded as they are planned: memory stays flat in the line count.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Container, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

from worker.domain import assistants as assistant_docs
from worker.domain.assistants import CONTENT_HASH, reference
from worker.domain.documents import Doc
from worker.domain.schema import (
    AssistantCreate,
    AssistantModify,
    fields_sent,
    validate_create,
    validate_modify,
)
from worker.runtime import Runtime
from worker.store import assistants

GROUP = 500
UNSAVED = {"_id": None, "id": None, "created_at": None}
NOT_FOUND = {"detail": "No assistant found"}


# A turn for the other requests of the process at least this often while an
# upload is parsed and planned (seconds of CPU for a large one).
TURN_SECONDS = 0.001
# In a threaded process (a worker), a sleep lets the other threads take the
# interpreter; not 0, which may not release it.
_PAUSE = 0.0001
_turn = [0.0]  # when the last turn was given: one clock for the whole process


def breathe() -> None:
    """Give the other requests of this process a turn if this one has run on
    for TURN_SECONDS. Cheap when not due.

    Under gevent (the edge) the upload then waits until the event loop is idle
    (`gevent.idle`): every other greenlet with a step ready, and every new
    connection the loop's poll finds (a `/healthz`), runs first: uploads run
    in the time the process's other requests leave. With a sleep instead
    (which only queues the upload behind the greenlets already runnable),
    another tenant's waited creates beside 6 clients looping 97 MiB dry runs
    took 3.0-4.2x their quiet p50, and with the wait for idle 1.7-2.4x
    (bench.edge_load dryruns, three runs of each), the dry runs 22-26 s against
    22 s. And alone, an upload no longer waits for a timer at each turn (a
    sleep's, which the loop fires on its next tick): a dry run of 20,000 ~1 KB
    lines took 1.95 s against 3.4-4.2 s, the same upload stored 1.7 s against
    2.4-2.8 s. The price: on a process kept busy by other requests, an upload
    waits for a pause in them."""
    now = time.monotonic()
    if now - _turn[0] >= TURN_SECONDS:
        _pause()
        _turn[0] = time.monotonic()


def _pause() -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("time"):
        import gevent  # type: ignore[import-untyped]

        gevent.idle()
    else:
        time.sleep(_PAUSE)


class Line(NamedTuple):
    custom_id: str | None
    body_text: str
    op: str | None = None  # None: a create; "modify", "delete" or "apply"
    target: str | None = None
    body: Any = None  # the body, if already parsed from `body_text`


def plan(
    rt: Runtime,
    tenant: str,
    lines: Iterable[Line],
    *,
    prune_except: Container[str] | None = None,
) -> Iterator[Doc]:
    """One plan line per request, in input order; then, with `prune_except` (the
    names the manifest gives), one `delete` line per keyed assistant it leaves out."""
    for line, _ in plan_seen(rt, tenant, lines, prune_except=prune_except):
        yield line


def plan_seen(
    rt: Runtime,
    tenant: str,
    lines: Iterable[Line],
    *,
    prune_except: Container[str] | None = None,
) -> Iterator[tuple[Doc, str | None]]:
    """`plan`'s lines, each with the version of the assistant it saw (None: none,
    or a deletion of a prune), which a plan's digest includes. Each group of
    lines reads the assistants its lines name, and no others."""
    source = iter(lines)
    while group := list(islice(source, GROUP)):
        keys = [line.custom_id for line in group if line.op == "apply" and line.custom_id]
        keyed = assistants.keyed(rt.store, tenant, keys)
        # Each body parsed once: for its validation, its hash and its plan.
        bodies: list[Any] = [
            None
            if line.op == "delete"
            else line.body
            if line.body is not None
            else json.loads(line.body_text)
            for line in group
        ]
        checked = []
        for line, body in zip(group, bodies, strict=True):
            checked.append(_check(rt, line, body))
            breathe()
        # An apply line whose body hashes as its keyed assistant's content is
        # unchanged, known without reading the rest of the assistant.
        unchanged: dict[int, Doc] = {}
        wanted: list[str] = []
        for index, (line, request) in enumerate(zip(group, checked, strict=True)):
            if line.op != "apply" or isinstance(request, list) or line.custom_id is None:
                continue
            known = keyed.get(line.custom_id)
            body = bodies[index]
            if known is not None and assistant_docs.decide(known, body)[0] == "unchanged":
                unchanged[index] = assistant_docs.public_from_request(body, reference(known))
            elif known is not None or assistants.may_be_id(line.custom_id):
                wanted.append(line.custom_id)  # read whole: its changes are shown
            # else a new key: no assistant to read
        named = assistants.find_named(rt.store, tenant, wanted)
        targets = [line.target for line in group if line.target is not None]
        by_id = assistants.find_mine(rt.store, tenant, targets)
        for index, (line, request) in enumerate(zip(group, checked, strict=True)):
            breathe()
            found = named if line.op == "apply" else by_id
            name = _name(line)
            if index in unchanged:
                known = keyed[name or ""]
                yield _answer(line, "unchanged", 200, unchanged[index]), known[CONTENT_HASH]
            else:
                doc = found.get(name) if name is not None else None
                seen = assistant_docs.version(doc) if doc is not None else None
                yield _plan_line(line, request, found, bodies[index]), seen
    if prune_except is not None:
        for doc in assistants.iter_keyed(rt.store, tenant):
            if not assistant_docs.left_out(doc, prune_except):
                continue
            yield (
                {
                    "custom_id": doc[assistant_docs.KEY],
                    "action": "delete",
                    "status_code": 200,
                    "body": assistant_docs.deleted(doc["id"]),
                },
                None,
            )


def _name(line: Line) -> str | None:
    return line.custom_id if line.op == "apply" else line.target


Checked = AssistantCreate | AssistantModify | list[dict[str, Any]] | None


def _check(rt: Runtime, line: Line, body: Any) -> Checked:
    """The line's parsed body as the worker validates it (None for a delete)."""
    if line.op == "delete":
        return None
    if line.op == "modify":
        return validate_modify(body, rt.settings.models)
    return validate_create(body, rt.settings.models)


def _plan_line(line: Line, request: Checked, named: dict[str, Doc], body: Any) -> Doc:
    name = _name(line)
    doc = named.get(name) if name is not None else None
    if isinstance(request, list):
        return _answer(line, "invalid", 422, {"detail": request})
    if line.op in ("delete", "modify") and doc is None:
        return _answer(line, "invalid", 404, NOT_FOUND)
    if line.op == "delete":
        assert doc is not None
        return _answer(line, "delete", 200, assistant_docs.deleted(doc["id"]))
    if isinstance(request, AssistantModify):
        assert doc is not None
        return _change(line, doc, {**doc, **assistant_docs.changes(fields_sent(request))})
    assert isinstance(request, AssistantCreate)
    if doc is None and line.op == "apply" and assistants.may_be_id(name or ""):
        # Named by an id no assistant has: never a new key that reads as an id.
        return _answer(line, "invalid", 404, NOT_FOUND)
    if doc is None:
        return _answer(line, "create", 200, assistant_docs.public_from_request(body, UNSAVED))
    action, changed = assistant_docs.decide(doc, body)
    state = assistant_docs.public({**doc, **assistant_docs.content(request)})
    if action == "unchanged" or not changed:
        return _answer(line, "unchanged", 200, state)
    return {**_answer(line, "update", 200, state), "changes": assistant_docs.plan_changes(changed)}


def _change(line: Line, doc: Doc, after: Doc) -> Doc:
    state = assistant_docs.public(after)
    changed = assistant_docs.field_changes(assistant_docs.public(doc), state)
    if not changed:
        return _answer(line, "unchanged", 200, state)
    return {**_answer(line, "update", 200, state), "changes": assistant_docs.plan_changes(changed)}


def _answer(line: Line, action: str, code: int, body: Any) -> Doc:
    return {"custom_id": line.custom_id, "action": action, "status_code": code, "body": body}


def plan_create(rt: Runtime, body_text: str) -> Doc:
    """The dry run of a single create."""
    line = Line(None, body_text)
    body = json.loads(body_text)
    return _plan_line(line, _check(rt, line, body), {}, body)


def plan_change(rt: Runtime, tenant: str, op: str, target: str, body_text: str = "") -> Doc:
    """The dry run of a single modify or delete of the assistant `target`, planned
    as a batch's modify or delete line is (`invalid` with 404 for one the tenant
    does not have)."""
    line = Line(None, body_text, op, target)
    return next(plan(rt, tenant, [line]))


def line_digest(line: Doc, seen: str | None) -> bytes:
    """A plan line's digest: what it would do (its whole body; its changes are
    known from the body and the version) and the version of the assistant it saw."""
    shown = {key: value for key, value in line.items() if key != "changes"}
    text = json.dumps([shown, seen], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def plan_digest(line_digests: Iterable[bytes]) -> str:
    """The digest of a whole plan, from its lines' digests in order: its ETag."""
    whole = hashlib.sha256()
    for digest in line_digests:
        whole.update(digest)
    return whole.hexdigest()
