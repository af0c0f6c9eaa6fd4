"""A plan as a precondition: `If-Match` with a dry run's ETag on an apply.

A dry run of an apply answers `ETag: "<digest>"`, the digest of its lines and
of the version of each assistant they name. An apply sent with `If-Match:
"<digest>"` is taken only if its plan, computed again, has that digest. The
lines' digests of each plan answered are kept a while in Redis, so a 412 can
say which lines' plans changed.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from flask import request
from redis.exceptions import RedisError

from api.batch_input import MAX_REPORTED
from api.errors import ApiError
from worker.runtime import Runtime

ETAG = re.compile(r'"([0-9a-f]{64})"')
# How long a plan's lines are kept to tell which changed, and how much of each
# line's digest (50,000 lines take 400 kB).
REMEMBER_SECONDS = 3600
KEPT_BYTES = 8


def plan_etag(*, apply: bool, dry_run: bool) -> str | None:
    """The plan digest `If-Match` names, or None without one; 400 for a header
    that names no plan, or that this request cannot honour."""
    if "If-None-Match" in request.headers:
        raise ApiError(
            400,
            "If-None-Match is not supported on POST /v1/batches; to apply a reviewed plan, "
            "send If-Match with the ETag of its dry run",
        )
    given = request.headers.get("If-Match")
    if given is None:
        return None
    given = given.strip()
    if given == "*":
        raise ApiError(
            400, "If-Match: * matches any plan; send the ETag of the dry run that was reviewed"
        )
    if not apply:
        raise ApiError(400, "If-Match needs mode=apply: only an apply has a plan")
    if dry_run:
        raise ApiError(400, "If-Match applies to an apply, not to its dry run")
    match = ETAG.fullmatch(given)
    if match is None:
        raise ApiError(
            400,
            'If-Match should be one strong ETag of a dry run, "<64 hex digits>" in quotes '
            "(weak ETags and lists name no plan)",
        )
    return match.group(1)


def _key(tenant: str, digest: str) -> str:
    return f"plan:{tenant}:{digest}"


def remember_plan(rt: Runtime, tenant: str, digest: str, lines: list[bytes]) -> None:
    """Keep the plan's lines' digests a while; without Redis a 412 is less precise."""
    with contextlib.suppress(RedisError):
        rt.redis.set(
            _key(tenant, digest),
            b"".join(line[:KEPT_BYTES] for line in lines),
            ex=REMEMBER_SECONDS,
        )


def plan_changed(
    rt: Runtime,
    tenant: str,
    expected: str,
    digests: list[bytes],
    lines: list[tuple[str | None, str, int]],
) -> ApiError:
    """The 412 of an apply whose plan is no longer the one `expected` names: the
    lines whose plan changed (the first MAX_REPORTED), as 422s list lines."""
    try:
        kept = rt.redis.get(_key(tenant, expected))
    except RedisError:
        kept = None
    if not isinstance(kept, bytes):
        return ApiError(
            412,
            [
                {
                    "type": "plan_changed",
                    "loc": ["header", "If-Match"],
                    "msg": "The plan changed since this ETag (or it names no plan known "
                    "now); nothing was applied: plan again",
                    "input": f'"{expected}"',
                }
            ],
        )
    before = [kept[at : at + KEPT_BYTES] for at in range(0, len(kept), KEPT_BYTES)]
    changed = []
    for index in range(max(len(before), len(digests))):
        old = before[index] if index < len(before) else None
        new = digests[index][:KEPT_BYTES] if index < len(digests) else None
        if old == new:
            continue
        entry: dict[str, Any]
        if new is None:
            entry = {"msg": "The plan had a line here that it no longer has"}
        else:
            custom_id, action, code = lines[index]
            entry = {
                "msg": "This line's plan changed since the ETag's dry run",
                "custom_id": custom_id,
                "action": action,
                "status_code": code,
            }
        changed.append({"type": "plan_changed", "loc": ["body", index], **entry})
    more = max(0, len(changed) - MAX_REPORTED)
    detail = changed[:MAX_REPORTED]
    if more:
        detail.append(
            {"type": "plan_changed", "loc": ["body"], "msg": f"... and {more} more lines"}
        )
    return ApiError(412, detail)
