"""Reading what a client sent, in the order API.md checks it: 415, 413,
header 422s, then the body's own 422."""

from __future__ import annotations

from flask import request

from api.context import settings
from api.errors import ApiError, unprocessable
from worker.services import urlguard


def require_content_type(*allowed: str) -> str:
    mimetype = request.mimetype
    if mimetype not in allowed:
        raise ApiError(415, f"Content-Type must be {' or '.join(allowed)}")
    return mimetype


def read_body(limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = ApiError(413, f"Request body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise unprocessable(
            ["header", "idempotency-key"],
            "string_too_long" if key else "string_too_short",
            "Idempotency-Key should have 1 to 255 characters",
            input=key[:300],
        )
    return key


def header_text(name: str) -> str | None:
    """A header whose value is text, such as a URL with international characters.

    A field value is octets (RFC 9110, 5.5), which WSGI hands over decoded as
    Latin-1. Clients send non-ASCII text in them as UTF-8 (an IRI is UTF-8),
    so octets that are valid UTF-8 are read as UTF-8; any others keep their
    Latin-1 reading, which is what they were most likely meant as.
    """
    value = request.headers.get(name)
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def callback_url() -> str | None:
    url = header_text("Callback-URL")
    if url is None:
        return None
    try:
        urlguard.check_submitted(url, allow_private=settings().webhook_allow_private)
    except urlguard.UrlRefused as exc:
        raise unprocessable(
            ["header", "callback-url"], exc.kind, str(exc), input=url[:2048]
        ) from exc
    return url
