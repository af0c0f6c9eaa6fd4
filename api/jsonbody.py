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
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


class JsonInvalid(ValueError):
    """A body that is not acceptable JSON; `detail` is FastAPI's 422 entry."""

    def __init__(self, position: int, error: str) -> None:
        super().__init__(error)
        self.detail = {
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
        raise JsonInvalid(_locate_depth(text), f"Nesting deeper than {MAX_DEPTH} levels") from exc
    _check_tree(text, value)
    return value


def _check_tree(text: str, value: Any) -> None:
    """Depth and lone surrogates, which the parser lets through."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise JsonInvalid(_locate_depth(text), f"Nesting deeper than {MAX_DEPTH} levels")
            for key, child in node.items():
                _check_string(text, key)
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise JsonInvalid(_locate_depth(text), f"Nesting deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            _check_string(text, node)


def _check_string(text: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        match = _LONE_SURROGATE.search(text)
        raise JsonInvalid(match.start() if match else 0, "Lone surrogate in string") from exc


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
