"""Tenants, their API keys (stored only as SHA-256 hashes) and webhook secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from pymongo import ASCENDING

from worker.domain.documents import Doc
from worker.store.connection import Store

KEY_PREFIX = "aik_"


def ensure_indexes(store: Store) -> None:
    store.api_keys.create_index([("tenant", ASCENDING)])


def hash_key(api_key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough; a slow password hash
    # would only cost every request time.
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Created:
    tenant: str
    api_key: str
    webhook_secret: str


def create_key(store: Store, tenant: str, webhook_url: str | None = None) -> Created:
    """Make a key for `tenant`, creating the tenant on first use."""
    now = int(time.time())
    secret = new_webhook_secret()
    store.tenants.update_one(
        {"_id": tenant},
        {"$setOnInsert": {"created_at": now, "secrets": [{"secret": secret, "expires_at": None}]}},
        upsert=True,
    )
    if webhook_url is not None:
        store.tenants.update_one({"_id": tenant}, {"$set": {"webhook_url": webhook_url}})
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.api_keys.insert_one(
        {"_id": hash_key(api_key), "tenant": tenant, "created_at": now, "revoked_at": None}
    )
    doc = store.tenants.find_one({"_id": tenant})
    assert doc is not None
    return Created(tenant=tenant, api_key=api_key, webhook_secret=current_secrets(doc)[0])


def revoke_key(store: Store, api_key: str) -> bool:
    result = store.api_keys.update_one(
        {"_id": hash_key(api_key), "revoked_at": None}, {"$set": {"revoked_at": int(time.time())}}
    )
    return result.modified_count == 1


def authenticate(store: Store, api_key: str) -> str | None:
    """The tenant of a live key, else None."""
    return authenticate_hash(store, hash_key(api_key))


def authenticate_hash(store: Store, digest: str) -> str | None:
    """The tenant of a live key given by its hash (what a console session keeps
    instead of the key), else None."""
    doc = store.api_keys.find_one({"_id": digest})
    if doc is None or doc.get("revoked_at") is not None:
        return None
    # The lookup is by hash; comparing in constant time as well costs nothing.
    if not hmac.compare_digest(doc["_id"], digest):
        return None
    return str(doc["tenant"])


def get(store: Store, tenant: str) -> Doc | None:
    return store.tenants.find_one({"_id": tenant})


def current_secrets(doc: Doc, now: float | None = None) -> list[str]:
    """The secrets that sign now: the newest first, then any still overlapping."""
    now = time.time() if now is None else now
    return [
        entry["secret"]
        for entry in doc.get("secrets", [])
        if entry.get("expires_at") is None or entry["expires_at"] > now
    ]


@dataclass(frozen=True)
class Rotated:
    secret: str
    previous_expire_at: int | None  # when the secrets it replaced stop signing


def rotate_secret(store: Store, tenant: str, overlap_seconds: int) -> Rotated:
    """A new signing secret; the one it replaces keeps signing for `overlap_seconds`.

    At most two secrets sign, the current and the previous one, as Standard
    Webhooks receivers expect: a rotation within the overlap of the last one
    drops the secret before it at once. Compare-and-set on the list read, so
    two rotations at once cannot lose a secret that the other one just made.
    """
    while True:
        doc = get(store, tenant)
        if doc is None:
            raise LookupError(f"no tenant {tenant!r}")
        now = time.time()
        secret = new_webhook_secret()
        live = [
            entry
            for entry in doc.get("secrets", [])
            if entry.get("expires_at") is None or entry["expires_at"] > now
        ]
        kept = [
            {
                "secret": entry["secret"],
                "expires_at": entry.get("expires_at") or now + overlap_seconds,
            }
            for entry in live[:1]
        ]
        result = store.tenants.update_one(
            {"_id": tenant, "secrets": doc.get("secrets", {"$exists": False})},
            {"$set": {"secrets": [{"secret": secret, "expires_at": None}, *kept]}},
        )
        if result.modified_count:
            expiry = kept[0]["expires_at"] if kept else None
            return Rotated(secret, int(expiry) if expiry is not None else None)


def webhook_url(store: Store, tenant: str) -> str | None:
    return webhook_urls(store, {tenant}).get(tenant)


def webhook_urls(store: Store, tenants: set[str]) -> dict[str, str | None]:
    """Each tenant's endpoint, in one read."""
    docs = store.tenants.find({"_id": {"$in": list(tenants)}}, {"webhook_url": 1})
    return {doc["_id"]: doc.get("webhook_url") for doc in docs}
