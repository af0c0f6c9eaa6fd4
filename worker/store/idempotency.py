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

from worker.domain.documents import Doc
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


def _record(scope: str, fp: str | None, target: str, window_seconds: int) -> Doc:
    record: Doc = {"_id": scope, "fingerprint": fp, "target": target, "created_at": time.time()}
    if window_seconds > 0:
        record["expire_at"] = datetime.now(UTC).replace(tzinfo=None) + timedelta(
            seconds=window_seconds
        )
    return record


def _insert_or_find(store: Store, record: Doc, window_seconds: int) -> Doc | None:
    """Insert the key's record; None when inserted, else the record that holds it."""
    scope, now = record["_id"], record["created_at"]
    for _ in range(3):
        try:
            store.idempotency.insert_one(record)
            return None
        except DuplicateKeyError:
            existing = store.idempotency.find_one({"_id": scope})
            if existing is None:
                continue  # released or expired in between: try again
            if window_seconds > 0 and existing["created_at"] < now - window_seconds:
                # Out of the window: the key is free again. Replace it only if
                # nobody else did first.
                store.idempotency.delete_one({"_id": scope, "created_at": existing["created_at"]})
                continue
            return existing
    raise RuntimeError("idempotency key kept changing under contention")


def claim(store: Store, scope: str, fp: str, new_target: str, window_seconds: int) -> Claim:
    """Reserve `scope` for `new_target`, or report what already holds it."""
    existing = _insert_or_find(
        store, _record(scope, fp, new_target, window_seconds), window_seconds
    )
    if existing is None:
        return Claim(target_id=new_target, replay=False)
    if existing["fingerprint"] != fp:
        return Claim(target_id=existing["target"], replay=True, conflict=True)
    return Claim(target_id=existing["target"], replay=True)


def hold(store: Store, scope: str, new_target: str, window_seconds: int) -> Doc | None:
    """Reserve `scope` for `new_target` before its request is read whole, so with
    no fingerprint yet (`settle` adds it); None when reserved, else the record
    that holds the key."""
    return _insert_or_find(store, _record(scope, None, new_target, window_seconds), window_seconds)


def settle(store: Store, scope: str, target: str, fp: str) -> bool:
    """Give a held key its request's fingerprint, unless it was taken over."""
    result = store.idempotency.update_one(
        {"_id": scope, "target": target, "fingerprint": None}, {"$set": {"fingerprint": fp}}
    )
    return result.modified_count == 1


def take_over(store: Store, scope: str, old: str, new: str, window_seconds: int) -> bool:
    """Hold a key for `new` whose request for `old` gave up, unless it changed in between."""
    fresh = _record(scope, None, new, window_seconds)
    del fresh["_id"]
    result = store.idempotency.update_one({"_id": scope, "target": old}, {"$set": fresh})
    return result.modified_count == 1


def get(store: Store, scope: str) -> Doc | None:
    return store.idempotency.find_one({"_id": scope})


def release(store: Store, scope: str, target: str) -> None:
    """Forget a key whose request was not accepted after all."""
    store.idempotency.delete_one({"_id": scope, "target": target})
