"""Bearer keys on every /v1 route; the tenant goes on the request.

A live key's tenant is remembered in the process for AUTH_CACHE_SECONDS, so a
client's requests cost no store read each: a revoked key is refused within
that time. Unknown keys are never remembered, so guessing fills nothing.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, g, request

from api.context import settings, store
from api.errors import ApiError
from worker.store import tenants

CHALLENGE = {"WWW-Authenticate": "Bearer"}
CACHE_SIZE = 10_000


class KeyCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A live key's tenant and digest (the rate limit counts by the digest).
        self._tenants: dict[str, tuple[str, str, float]] = {}

    def tenant(self, key: str, ttl: float) -> tuple[str, str] | None:
        """The key's tenant and its SHA-256 digest; None for no live key."""
        now = time.monotonic()
        with self._lock:
            known = self._tenants.get(key)
        if known is not None and known[2] > now:
            return known[0], known[1]
        digest = tenants.hash_key(key)
        tenant = tenants.authenticate_hash(store(), digest)
        if tenant is None:
            return None
        if ttl > 0:
            with self._lock:
                if len(self._tenants) >= CACHE_SIZE:
                    self._tenants.clear()  # many live keys at once: start over
                self._tenants[key] = (tenant, digest, now + ttl)
        return tenant, digest


def register(app: Flask) -> None:
    cache = KeyCache()

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > 512:
            raise ApiError(401, "Missing or invalid API key", CHALLENGE)
        found = cache.tenant(key, settings().auth_cache_seconds)
        if found is None:
            raise ApiError(401, "Missing or invalid API key", CHALLENGE)
        g.tenant, g.key_hash = found
        g.stages.lap("auth")
