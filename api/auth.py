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
        self._tenants: dict[str, tuple[str, float]] = {}

    def tenant(self, key: str, ttl: float) -> str | None:
        now = time.monotonic()
        with self._lock:
            known = self._tenants.get(key)
        if known is not None and known[1] > now:
            return known[0]
        tenant = tenants.authenticate(store(), key)
        if tenant is not None and ttl > 0:
            with self._lock:
                if len(self._tenants) >= CACHE_SIZE:
                    self._tenants.clear()  # many live keys at once: start over
                self._tenants[key] = (tenant, now + ttl)
        return tenant


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
        tenant = cache.tenant(key, settings().auth_cache_seconds)
        if tenant is None:
            raise ApiError(401, "Missing or invalid API key", CHALLENGE)
        g.tenant = tenant
        g.stages.lap("auth")
