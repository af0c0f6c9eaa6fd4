"""Query strings of the list routes: known names only, typed, bounded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import request

from api.errors import ApiError
from worker.domain.documents import Doc


def _error(name: str, type_: str, msg: str, value: Any, **ctx: Any) -> ApiError:
    entry: dict[str, Any] = {"type": type_, "loc": ["query", name], "msg": msg, "input": value}
    if ctx:
        entry["ctx"] = ctx
    return ApiError(422, [entry])


def allow_only(names: Iterable[str]) -> None:
    known = set(names)
    for name in request.args:
        if name not in known:
            raise _error(
                name, "extra_forbidden", "Extra inputs are not permitted", request.args[name]
            )
        if len(request.args.getlist(name)) > 1:
            raise _error(
                name, "too_long", "Give this parameter at most once", request.args.getlist(name)
            )


def limit(default: int = 20, maximum: int = 100) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _error(
            "limit",
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            raw,
        ) from None
    if value < 1:
        raise _error(
            "limit", "greater_than_equal", "Input should be greater than or equal to 1", raw, ge=1
        )
    if value > maximum:
        raise _error(
            "limit",
            "less_than_equal",
            f"Input should be less than or equal to {maximum}",
            raw,
            le=maximum,
        )
    return value


def choice(name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw not in options:
        expected = " or ".join(f"'{option}'" for option in options)
        raise _error(name, "literal_error", f"Input should be {expected}", raw, expected=expected)
    return raw


def text(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw:
        raise _error(
            name, "string_too_short", "String should have at least 1 character", raw, min_length=1
        )
    if len(raw) > 255:
        raise _error(
            name,
            "string_too_long",
            "String should have at most 255 characters",
            raw[:300],
            max_length=255,
        )
    return raw


def unknown_cursor(name: str, value: str | None) -> ApiError:
    return _error(name, "value_error", "Value error, no object with this id", value)


def list_object(data: list[Doc], has_more: bool) -> Doc:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
