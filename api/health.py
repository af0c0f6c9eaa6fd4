"""`/healthz` (the process is up) and `/readyz` (Redis and MongoDB answer)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.context import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    rt = runtime()
    checks: dict[str, str] = {}
    for name, probe in (("mongodb", rt.store.ping), ("redis", rt.redis.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response
