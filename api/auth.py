"""Bearer keys on every /v1 route; the tenant goes on the request."""

from __future__ import annotations

from flask import Flask, g, request

from api.context import store
from api.errors import ApiError
from worker.store import tenants

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def register(app: Flask) -> None:
    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > 512:
            raise ApiError(401, "Missing or invalid API key", CHALLENGE)
        tenant = tenants.authenticate(store(), key)
        if tenant is None:
            raise ApiError(401, "Missing or invalid API key", CHALLENGE)
        g.tenant = tenant
        g.stages.lap("auth")
