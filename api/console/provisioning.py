"""The console's provisioning: upload a manifest, see its plan as a diff, apply
exactly that plan.

The upload is planned by the API's own dry run of an apply (`upload`, as
`POST /v1/batches?mode=apply&dry_run=true`), whose ETag is the plan's
digest. The manifest is kept in Redis under the session and that digest
until it is applied, so the apply sends the same bytes with the digest as
its precondition (as `If-Match`): if any assistant the plan names changed in
between, nothing is applied and the page says which lines' plans changed.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

from flask import Response, redirect, request, url_for

from api import batches as batch_routes
from api.console.blueprint import FORM_OVERHEAD, Refused, bp, page, session
from api.context import runtime
from api.errors import ApiError
from api.preconditions import ETAG, REMEMBER_SECONDS

SHOWN = 1000  # plan lines shown (changes and invalid lines); the counts cover all


def _kept(digest: str, prune: bool) -> str:
    rt = runtime()
    owner = session().key.rsplit(":", 1)[-1]
    return f"{rt.settings.redis_prefix}:console:manifest:{owner}:{digest}:{int(prune)}"


@bp.get("/provisioning")
def provisioning_page() -> tuple[str, int]:
    return page("provisioning.html", plan=None, errors=None)


@bp.post("/provisioning/plan")
def plan_manifest() -> tuple[str, int]:
    cap = runtime().settings.console_max_manifest_bytes
    if request.content_length is not None and request.content_length > cap + FORM_OVERHEAD:
        raise Refused(413, f"The manifest is larger than {cap:,} bytes; apply it with the CLI")
    upload = request.files.get("manifest")
    prune = request.form.get("prune") == "on"
    if upload is None or not upload.filename:
        return page("provisioning.html", 422, plan=None, errors=["Choose a manifest to upload."])
    data = upload.stream.read(cap + 1)
    if len(data) > cap:
        raise Refused(413, f"The manifest is larger than {cap:,} bytes; apply it with the CLI")
    try:
        answer = batch_routes.upload(
            io.BytesIO(data), jsonl=True, mode="apply", prune=prune, dry_run=True
        )
    except ApiError as exc:
        if exc.status not in (413, 422):
            raise
        return page("provisioning.html", 422, plan=None, errors=_messages(exc.detail))
    lines = _read_plan(answer)
    match = ETAG.fullmatch(answer.headers.get("ETag", ""))
    if match is None:
        raise Refused(500, "The plan came without its digest")
    digest = match.group(1)
    runtime().redis.set(_kept(digest, prune), data, ex=REMEMBER_SECONDS)
    return page(
        "provisioning.html",
        plan=_plan_view(lines),
        digest=digest,
        prune=prune,
        filename=upload.filename,
        errors=None,
    )


def _read_plan(answer: Response) -> list[dict[str, Any]]:
    try:
        body = b"".join(answer.iter_encoded())
    finally:
        answer.close()
    return [json.loads(raw) for raw in body.splitlines() if raw.strip()]


def _plan_view(lines: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(line["action"] for line in lines)
    changed = [line for line in lines if line["action"] != "unchanged"]
    return {
        "counts": {a: counts[a] for a in ("create", "update", "delete", "unchanged", "invalid")},
        "lines": changed[:SHOWN],
        "more": max(0, len(changed) - SHOWN),
        "changes_anything": any(counts[a] for a in ("create", "update", "delete")),
    }


def _messages(detail: Any) -> list[str]:
    """An ApiError's detail as sentences: a 422's entries by line and field."""
    if not isinstance(detail, list):
        return [str(detail)]
    shown = []
    for entry in detail:
        if not isinstance(entry, dict):
            shown.append(str(entry))
            continue
        loc = list(entry.get("loc") or [])
        where = ""
        if len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], int):
            where = f"line {loc[1] + 1}"
            if len(loc) > 2:
                where += ", " + ".".join(str(part) for part in loc[2:])
            where += ": "
        if entry.get("custom_id"):
            where = f"{where}(custom_id {json.dumps(entry['custom_id'])}) "
        shown.append(f"{where}{entry.get('msg')}")
    return shown


@bp.post("/provisioning/apply")
def apply_plan() -> Response | tuple[str, int]:
    digest = request.form.get("digest", "")
    prune = request.form.get("prune") == "on"
    if ETAG.fullmatch(f'"{digest}"') is None:
        raise Refused(422, "This form names no plan; upload the manifest again")
    key = _kept(digest, prune)
    rt = runtime()
    # Taken, not read: a second press of the button (or a second tab) finds
    # nothing to apply instead of applying the plan twice.
    data = rt.redis.getdel(key)
    if not isinstance(data, bytes):
        return page(
            "provisioning.html",
            410,
            plan=None,
            errors=["This plan was applied or has expired; upload the manifest again."],
        )
    try:
        answer = batch_routes.upload(
            io.BytesIO(data), jsonl=True, mode="apply", prune=prune, expected=digest
        )
    except ApiError as exc:
        if exc.status != 412:
            # Not taken (429, 503...): the same plan can be applied again.
            rt.redis.set(key, data, ex=REMEMBER_SECONDS)
            raise
        errors = [
            "Nothing was applied: the plan changed since it was shown "
            "(an assistant it names was changed). Upload the manifest again to see the new plan.",
            *_messages(exc.detail),
        ]
        return page("provisioning.html", 412, plan=None, errors=errors)
    batch = json.loads(answer.get_data())
    return redirect(url_for("console.batch_page", batch_id=batch["id"]), 303)  # type: ignore[return-value]
