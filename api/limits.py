"""Rate limits per API key, counted in Redis so every edge process shares them.

Registered after authentication, so an unknown key is a 401 before it costs
anything, and before any handler, so a 429 comes before 415, 413 and the rest.
One budget covers every /v1 route; a batch is one request like any other.
Headers follow the IETF RateLimit fields: `RateLimit-Reset` is seconds from
now. `Retry-After` is set only on 429, since 202 answers use it for polling.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
import time

from flask import Flask, Response, g, jsonify, request
from flask_limiter import Limiter, RateLimitExceeded

from api.errors import ApiError
from worker.settings import Settings

EXTENSION = "assistant_ingest.limiter"


def api_key_identity() -> str:
    # Authentication has already accepted this key; a digest keeps it out of Redis.
    _, _, key = request.headers.get("Authorization", "").partition(" ")
    return hashlib.sha256(key.strip().encode("utf-8", "surrogatepass")).hexdigest()


class InFlight:
    """Requests in flight per API key in this process: one key's flood of
    connections (waiters, slow uploads) cannot take a process's every slot."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._lock = threading.Lock()
        self._count: collections.Counter[str] = collections.Counter()

    def enter(self, key: str) -> str:
        with self._lock:
            if self._count[key] >= self._cap:
                raise ApiError(
                    429,
                    f"More than {self._cap} requests in flight with this API key",
                    {"Retry-After": "1"},
                )
            self._count[key] += 1
        return key

    def leave(self, key: str) -> None:
        with self._lock:
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]


def register(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        key_func=api_key_identity,
        app=app,
        application_limits=[settings.rate_limit],
        storage_uri=settings.redis_url,
        storage_options={"socket_timeout": 2, "socket_connect_timeout": 2},
        strategy="fixed-window",
        key_prefix=f"{settings.redis_prefix}:ratelimit",
        headers_enabled=False,
        # Redis down must not stop the edge: MongoDB holds the jobs and the
        # reconciler sends them, so requests go on unlimited until it is back.
        swallow_errors=True,
    )
    limiter.request_filter(lambda: not request.path.startswith("/v1/"))
    app.extensions[EXTENSION] = limiter

    @app.before_request
    def timed() -> None:
        g.stages.lap("rate_limit")  # runs right after the limiter's own check

    in_flight = InFlight(settings.max_requests_per_key)

    @app.before_request
    def concurrency() -> None:
        if request.path.startswith("/v1/") and g.get("tenant") is not None:
            g.in_flight = in_flight.enter(api_key_identity())

    @app.teardown_request
    def done(_: BaseException | None) -> None:
        key = g.pop("in_flight", None)
        if key is not None:
            in_flight.leave(key)

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded) -> Response:
        response = jsonify({"detail": f"Rate limit exceeded: {exc.description}"})
        response.status_code = 429
        return response

    @app.after_request
    def rate_limit_headers(response: Response) -> Response:
        current = limiter.current_limit
        if current is None:
            return response
        try:
            reset_time, remaining = current.window
        except Exception:  # the store is unreachable: no numbers to tell
            return response
        reset = max(0, math.ceil(reset_time - time.time()))
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, remaining))
        response.headers["RateLimit-Reset"] = str(reset)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, reset))
        return response

    return limiter
