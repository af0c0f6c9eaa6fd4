"""`/healthz` (the process is up) and `/readyz` (Redis and MongoDB answer)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pymongo
from flask import Blueprint, Response, jsonify
from pymongo.errors import ConnectionFailure, PyMongoError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from api.context import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    rt = runtime()
    seconds = rt.settings.store_timeout_ms / 1000

    def ping_store() -> None:
        # The whole command within the deadline, server selection and reply
        # included: a store that accepts connections but never answers (hung,
        # or stopped) must not hold the probe for pymongo's heartbeat period.
        with pymongo.timeout(seconds):
            rt.store.ping()

    checks = probe({"mongodb": ping_store, "redis": rt.redis.ping}, seconds)
    ready = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


def probe(checks: dict[str, Callable[[], object]], seconds: float) -> dict[str, str]:
    """Each check run side by side; what has not answered within `seconds` is
    reported as such, so the answer never takes longer than that."""
    found = dict.fromkeys(checks, f"unavailable: no answer within {seconds:g} s")

    def run(name: str, check: Callable[[], object]) -> None:
        try:
            check()
            found[name] = "ok"
        except Exception as exc:
            found[name] = f"unavailable: {_words(exc, seconds)}"

    threads = [
        threading.Thread(target=run, args=item, name=f"readyz-{item[0]}", daemon=True)
        for item in checks.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
    # A check still running when the time is up keeps its "no answer" entry.
    return dict(found)


def _words(exc: BaseException, seconds: float) -> str:
    """What an operator reads: what went wrong, never a class name or an address."""
    text = str(exc).lower()
    if "refused" in text:
        return "cannot connect (connection refused)"
    # pymongo marks its timeouts (server selection, network, the deadline).
    if getattr(exc, "timeout", False) is True or isinstance(exc, TimeoutError | RedisTimeout):
        return f"no answer within {seconds:g} s"
    if isinstance(exc, ConnectionFailure | RedisConnectionError | ConnectionError):
        return "cannot connect"
    if isinstance(exc, PyMongoError | RedisError):
        return "the server answered with an error"
    return "the check failed"
