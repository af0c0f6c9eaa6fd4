"""Rate limits per API key, counted in Redis so every edge process shares them.

Registered after authentication, so an unknown key is a 401 before it costs
anything, and before any handler, so a 429 comes before 415, 413 and the rest.
One budget covers every /v1 route. A request costs one unit, plus one for every
RATE_LIMIT_BYTES_PER_UNIT bytes of its body past the first: a 99 MiB upload
(parsed, checked and planned by the edge) costs what its work is, not what a
`GET` does. A body sent without a length is charged once it has been read.

Per tenant, in each edge process, result streams and exports in progress at
once, and batch uploads (dry runs included), are capped (429 beyond). These
are counted per process, not in Redis: what they protect is the process's own
greenlets, memory, CPU and store connections, a count in the process needs no
round trip and is never left behind by a process that dies, and across P
processes a tenant holds at most P times its share.
A fixed window per key starts at its first request; counting a request and
reading what remains of its window is one Redis round trip (a script), and
each process takes a few units at a time from it (allowances.py), so most
requests need none.
Headers follow the IETF RateLimit fields: `RateLimit-Reset` is seconds from
now. `Retry-After` is set only on 429, since 202 answers use it for polling.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request
from redis.exceptions import RedisError

from api.allowances import TAKE, Allowances
from api.context import runtime
from api.errors import ApiError
from worker.settings import Settings

log = logging.getLogger(__name__)

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"^\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$")


@dataclass(frozen=True)
class RateLimit:
    amount: int
    seconds: int
    text: str  # as the 429 says it: "6000 per 1 minute"

    @classmethod
    def parse(cls, value: str) -> RateLimit:
        """`6000/minute`, `10 per second`, `100/5 minutes`: an amount per window."""
        match = _LIMIT.match(value.lower())
        if match is None or int(match[1]) < 1:
            raise ValueError(f"RATE_LIMIT must be like 6000/minute, not {value!r}")
        amount, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
        plural = "s" if multiple > 1 else ""
        return cls(amount, multiple * _UNITS[unit], f"{amount} per {multiple} {unit}{plural}")


def api_key_identity() -> str:
    """The SHA-256 digest of the request's API key, which keeps the key out of
    Redis: put on the request by authentication, or by a console session (which
    keeps the digest of the key it signed in with, so its requests share the
    key's budget)."""
    digest: str = g.key_hash
    return digest


# The routes whose requests hold the edge long (streams) or cost it much CPU
# (uploads), each capped per tenant: endpoint names, and what the 429 says.
STREAMS = frozenset(
    {"batches.batch_results", "assistants.export_assistants", "console.batch_results"}
)
UPLOADS = frozenset({"batches.create_batch", "console.plan_manifest", "console.apply_plan"})


def limited() -> bool:
    """A request the limits count: a /v1 route's, or a signed-in console page's
    (the console's session check puts its tenant on the request as auth does)."""
    if g.get("tenant") is None:
        return False
    return request.path.startswith(("/v1/", "/console/"))


class InFlight:
    """Requests in flight per API key (or tenant) in this process: one key's
    flood of connections (waiters, slow uploads) cannot take a process's every slot."""

    def __init__(self, cap: int, what: str = "requests in flight with this API key") -> None:
        self._cap = cap
        self._what = what
        self._lock = threading.Lock()
        self._count: collections.Counter[str] = collections.Counter()

    def enter(self, key: str) -> str:
        with self._lock:
            if self._count[key] >= self._cap:
                raise ApiError(
                    429,
                    f"More than {self._cap} {self._what}",
                    {"Retry-After": "1"},
                )
            self._count[key] += 1
        return key

    def leave(self, key: str) -> None:
        with self._lock:
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]


def register(app: Flask, settings: Settings) -> None:
    limit = RateLimit.parse(settings.rate_limit)
    prefix = f"{settings.redis_prefix}:ratelimit:"

    per_unit = max(1, settings.rate_limit_bytes_per_unit)

    def take(key: str, window_ms: int, need: int, ask: int, amount: int) -> Any:
        # redis-py's types join its sync and async clients (and differ by version).
        answer: Any = runtime().redis.eval(TAKE, 1, key, window_ms, need, ask, amount)
        return answer

    # Made with the app, in the process that serves it (after fork).
    allowances = Allowances(take, limit.amount, limit.seconds)

    @app.before_request
    def check() -> None:
        if not limited():
            return
        length = request.content_length
        cost = 1 + max(0, (length or 0) - 1) // per_unit
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            # Chunked: the body's cost is known once it is read (see `charge`).
            counted = _Counted(request.environ["wsgi.input"])
            request.environ["wsgi.input"] = counted
            g.body_counted = counted
        try:
            count, ttl_ms = allowances.hit(prefix + api_key_identity(), cost)
        except RedisError as exc:
            # Redis down must not stop the edge: MongoDB holds the jobs and the
            # reconciler sends them, so requests go on unlimited until it is back.
            log.warning("rate limit not counted: %s", exc)
            return
        finally:
            g.stages.lap("rate_limit")
        g.rate_limit = (count, ttl_ms)
        if count > limit.amount:
            raise ApiError(429, f"Rate limit exceeded: {limit.text}")

    in_flight = InFlight(settings.max_requests_per_key)
    streams = InFlight(settings.max_streams_per_tenant, "result streams and exports at once")
    uploads = InFlight(settings.max_uploads_per_tenant, "batch uploads at once")

    @app.before_request
    def concurrency() -> None:
        if limited():
            g.in_flight = in_flight.enter(api_key_identity())
            shares = (
                streams
                if request.endpoint in STREAMS
                else uploads
                if request.endpoint in UPLOADS
                else None
            )
            if shares is not None:
                g.share = (shares, shares.enter(g.tenant))

    @app.after_request
    def until_sent(response: Response) -> Response:
        # A streamed answer (results, an export, a dry run's plan) is sent after
        # the request's teardown: its share is given back once it is sent or
        # its client has gone, when the server closes it.
        share = g.pop("share", None) if response.is_streamed else None
        if share is not None:
            response.call_on_close(lambda: share[0].leave(share[1]))
        return response

    @app.teardown_request
    def done(_: BaseException | None) -> None:
        key = g.pop("in_flight", None)
        if key is not None:
            in_flight.leave(key)
        share = g.pop("share", None)
        if share is not None:
            share[0].leave(share[1])
        counted = g.pop("body_counted", None)
        if counted is not None and counted.size > per_unit:
            charge(prefix + api_key_identity(), (counted.size - 1) // per_unit)

    def charge(key: str, units: int) -> None:
        """Count a body's units once it has been read: what was sent without a
        length costs what it would have with one (the next requests pay for it)."""
        with contextlib.suppress(RedisError):
            allowances.hit(key, units)

    @app.after_request
    def rate_limit_headers(response: Response) -> Response:
        counted = g.get("rate_limit")
        if counted is None:
            return response
        count, ttl_ms = counted
        reset = max(0, math.ceil(ttl_ms / 1000))
        response.headers["RateLimit-Limit"] = str(limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, limit.amount - count))
        response.headers["RateLimit-Reset"] = str(reset)
        if response.status_code == 429 and count > limit.amount:
            response.headers["Retry-After"] = str(max(1, reset))
        return response


class _Counted:
    """A request body that counts the bytes read from it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.size = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.size += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.size += len(data)
        return data

    def __iter__(self) -> Any:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
