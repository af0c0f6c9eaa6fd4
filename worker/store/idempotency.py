"""Idempotency keys: the same key and body return the original job or batch.

Scope is tenant + method + path + key; the fingerprint is the SHA-256 of the
raw body and the Callback-URL. The window is enforced here, by the lookup;
the TTL index only sweeps what the lookup already ignores.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo.errors import DuplicateKeyError

from worker.store.connection import Store


def ensure_indexes(store: Store) -> None:
    store.idempotency.create_index("expire_at", expireAfterSeconds=0)


def fingerprint(raw_body: bytes, callback_url: str | None) -> str:
    digest = hashlib.sha256(raw_body)
    digest.update(b"\0callback-url\0" + (callback_url or "").encode())
    return digest.hexdigest()


def scope_id(tenant: str, method: str, path: str, key: str) -> str:
    return hashlib.sha256("\0".join((tenant, method, path, key)).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: a new target, a replay, or a conflict."""

    target_id: str
    replay: bool
    conflict: bool = False


def claim(store: Store, scope: str, fp: str, new_target: str, window_seconds: int) -> Claim:
    """Reserve `scope` for `new_target`, or report what already holds it."""
    now = time.time()
    expire_at = None
    if window_seconds > 0:
        expire_at = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=window_seconds)
    record = {"_id": scope, "fingerprint": fp, "target": new_target, "created_at": now}
    if expire_at is not None:
        record["expire_at"] = expire_at
    for _ in range(3):
        try:
            store.idempotency.insert_one(record)
            return Claim(target_id=new_target, replay=False)
        except DuplicateKeyError:
            existing = store.idempotency.find_one({"_id": scope})
            if existing is None:
                continue  # released or expired in between: try again
            if window_seconds > 0 and existing["created_at"] < now - window_seconds:
                # Out of the window: the key is free again. Replace it only if
                # nobody else did first.
                store.idempotency.delete_one({"_id": scope, "created_at": existing["created_at"]})
                continue
            if existing["fingerprint"] != fp:
                return Claim(target_id=existing["target"], replay=True, conflict=True)
            return Claim(target_id=existing["target"], replay=True)
    raise RuntimeError("idempotency key kept changing under contention")


def release(store: Store, scope: str, target: str) -> None:
    """Forget a key whose request was not accepted after all."""
    store.idempotency.delete_one({"_id": scope, "target": target})


def retarget(store: Store, scope: str, old: str, new: str) -> bool:
    """Point a key held for `old` at `new`, unless it changed in between."""
    result = store.idempotency.update_one({"_id": scope, "target": old}, {"$set": {"target": new}})
    return result.modified_count == 1
