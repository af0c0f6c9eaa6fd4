"""Strict JSON parsing at the edge: what cannot be stored or answered faithfully
is refused as FastAPI's `json_invalid`, with a character offset.

Refused: invalid UTF-8, invalid JSON (raw control characters in strings,
NaN, Infinity), escaped lone surrogates, nesting deeper than 64 levels,
integers outside the signed 64-bit range, and floats that overflow.
Duplicate keys: the last one wins, as in Python's parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Strings and structural characters, for locating a problem after a parse.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


class JsonInvalid(ValueError):
    """A body that is not acceptable JSON; `detail` is FastAPI's 422 entry."""

    def __init__(self, position: int, error: str) -> None:
        super().__init__(error)
        self.detail: dict[str, Any] = {
            "type": "json_invalid",
            "loc": ["body", position],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error},
        }


class _Refused(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _check_int(text: str) -> int:
    # Longer than any int64 (and than int()'s own digit limit): refuse unread.
    value = int(text) if len(text) <= 20 else INT64_MAX + 1
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused("Integer outside the signed 64-bit range")
    return value


def _check_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused("Number out of range")
    return value


def decode_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        position = len(raw[: exc.start].decode("utf-8", "replace"))
        raise JsonInvalid(position, "Invalid UTF-8 in request body") from exc
    # A UTF-8 byte order mark is not part of the document.
    return text.removeprefix("\ufeff")


def parse(raw: bytes) -> Any:
    """The parsed document, or JsonInvalid."""
    text = decode_text(raw)
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, parse_int=_check_int, parse_float=_check_float
        )
    except json.JSONDecodeError as exc:
        raise JsonInvalid(exc.pos, exc.msg) from exc
    except _Refused as exc:
        raise JsonInvalid(_locate_number(text, str(exc)), str(exc)) from exc
    except RecursionError as exc:
        raise JsonInvalid(_locate_depth(text), DEPTH_ERROR) from exc
    # Most documents cannot hold what check_value looks for: skip the walk then.
    if text.count("[") + text.count("{") <= MAX_DEPTH and not _SURROGATE_ESCAPE.search(text):
        return value
    try:
        check_value(value)
    except ValueError as exc:
        error = str(exc)
        if error == DEPTH_ERROR:
            position = _locate_depth(text)
        else:
            match = _LONE_SURROGATE.search(text)
            position = match.start() if match else 0
        raise JsonInvalid(position, error) from exc
    return value


DEPTH_ERROR = f"Nesting deeper than {MAX_DEPTH} levels"


def check_value(value: Any) -> None:
    """Refuse, with ValueError, what a parser let through but cannot be kept:
    nesting deeper than 64, lone surrogates, out-of-range numbers."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(DEPTH_ERROR)
            if isinstance(node, dict):
                for key in node:
                    _check_string(key)
                stack.extend((child, depth + 1) for child in node.values())
            else:
                stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            _check_string(node)
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int) and not INT64_MIN <= node <= INT64_MAX:
            raise ValueError("Integer outside the signed 64-bit range")
        elif isinstance(node, float) and (node in (float("inf"), float("-inf")) or node != node):
            raise ValueError("Number out of range")


def _check_string(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("Lone surrogate in string") from exc


def _locate_depth(text: str) -> int:
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in "]}":
            depth -= 1
    return 0


def _locate_number(text: str, error: str) -> int:
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == "-" or token[0].isdigit():
            try:
                (_check_float if any(c in token for c in ".eE") else _check_int)(token)
            except _Refused:
                return match.start()
        elif token in ("NaN", "Infinity"):
            return match.start()
    index = max(text.find("NaN"), text.find("Infinity"))
    return max(index, 0)
