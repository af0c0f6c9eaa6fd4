"""Console sessions: a random id in a signed cookie, the rest in Redis.

Signing in with an API key makes a session record in Redis, under the hash of
a random session id: the tenant, the hash of the key (never the key) and the
session's CSRF token, for `console_session_seconds`. The browser holds only
the id, signed with a secret every edge process shares, in an `HttpOnly`,
`SameSite=Strict` cookie whose path is /console. Signing out deletes the
record; a request whose key has been revoked ends it (see `api.console`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from flask import Flask, Response, request
from redis.exceptions import RedisError

from api.context import settings
from worker.runtime import Runtime

COOKIE = "console_session"
PATH = "/console"
_SECRET = "assistant_ingest.console_secret"
# Sessions kept per API key: a person's browsers and tabs, not a flood.
SESSIONS_PER_KEY = 16


@dataclass(frozen=True)
class Session:
    key: str  # its Redis key (made from the hash of its id)
    tenant: str
    key_hash: str  # the API key's SHA-256, as the store keeps it
    csrf: str


def secret(app: Flask, rt: Runtime) -> bytes:
    """The cookies' signing secret: the setting, else one made once and kept in
    Redis (SET NX: the first process to ask makes it, every other reads it)."""
    known: bytes | None = app.extensions.get(_SECRET)
    if known is not None:
        return known
    configured = rt.settings.console_secret
    if configured:
        value = configured.encode()
    else:
        name = f"{rt.settings.redis_prefix}:console:secret"
        rt.redis.set(name, secrets.token_hex(32), nx=True)
        stored = rt.redis.get(name)
        if not isinstance(stored, bytes):
            raise RedisError("the console's signing secret could not be read")
        value = stored
    app.extensions[_SECRET] = value
    return value


def sign(key: bytes, value: str) -> str:
    mac = hmac.new(key, value.encode(), hashlib.sha256).digest()
    return value + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def unsign(key: bytes, signed: str) -> str | None:
    value, _, _ = signed.rpartition(".")
    if not value or not hmac.compare_digest(sign(key, value), signed):
        return None
    return value


def _redis_key(rt: Runtime, session_id: str) -> str:
    # The id itself is not kept: a copy of Redis holds no usable cookie.
    digest = hashlib.sha256(session_id.encode()).hexdigest()
    return f"{rt.settings.redis_prefix}:console:session:{digest}"


def start(app: Flask, rt: Runtime, tenant: str, key_hash: str) -> tuple[str, Session]:
    """A new session for the tenant: the cookie's value, and the session.

    A key's sessions are indexed by when they began, and only its newest
    SESSIONS_PER_KEY are kept: signing in again and again cannot fill Redis.
    """
    session_id = secrets.token_urlsafe(32)
    session = Session(_redis_key(rt, session_id), tenant, key_hash, secrets.token_urlsafe(32))
    record = {"tenant": tenant, "key_hash": key_hash, "csrf": session.csrf}
    ttl, now = rt.settings.console_session_seconds, time.time()
    index = f"{rt.settings.redis_prefix}:console:sessions:{key_hash}"
    pipe = rt.redis.pipeline()
    pipe.set(session.key, json.dumps(record), ex=ttl)
    pipe.zadd(index, {session.key: now})
    pipe.zremrangebyscore(index, 0, now - ttl)  # sessions that have lapsed
    pipe.zrange(index, 0, -(SESSIONS_PER_KEY + 1))  # the oldest beyond the cap
    pipe.expire(index, ttl)
    *_, oldest, _ = pipe.execute()
    if oldest:
        rt.redis.delete(*oldest)
        rt.redis.zrem(index, *oldest)
    return sign(secret(app, rt), session_id), session


def load(app: Flask, rt: Runtime) -> Session | None:
    """The session the request's cookie names, if it is signed and still kept."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 256:
        return None
    session_id = unsign(secret(app, rt), cookie)
    if session_id is None:
        return None
    key = _redis_key(rt, session_id)
    raw = rt.redis.get(key)
    if not isinstance(raw, bytes):
        return None
    record = json.loads(raw)
    return Session(key, record["tenant"], record["key_hash"], record["csrf"])


def end(rt: Runtime, session: Session) -> None:
    with contextlib.suppress(RedisError):
        rt.redis.delete(session.key)


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        secure=settings().console_cookie_secure,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=PATH, secure=settings().console_cookie_secure, httponly=True, samesite="Strict"
    )
