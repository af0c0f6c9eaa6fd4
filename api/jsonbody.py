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

from pydantic_core import PydanticSerializationError, to_json

MAX_DEPTH = 64
DEPTH_ERROR = f"Nesting deeper than {MAX_DEPTH} levels"
LONE_SURROGATE = "Lone surrogate in string"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Strings and structural characters, for locating a problem after a parse.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Strings and numbers, for locating a refused number.
_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')


class JsonInvalid(ValueError):
    """A body that is not acceptable JSON; `detail` is FastAPI's 422 entry."""

    def __init__(self, position: int, error: str) -> None:
        super().__init__(error)
        self.position, self.error = position, error
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


# Python's parser with the edge's refusals; `raw_decode` reads one value.
_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_check_int, parse_float=_check_float
)


def dump(value: Any) -> str:
    """A parsed value as compact JSON text (what the workers are given to parse
    again): pydantic's encoder, about three times as fast as the json module's
    with `ensure_ascii=False`, writing the same text but for how some numbers
    are spelled (`1e16`, not `1e+16`), which parse to the same values. A string
    UTF-8 cannot hold (never in a parsed body, which refuses lone surrogates)
    falls back to the json module."""
    try:
        return to_json(value).decode()
    except PydanticSerializationError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        raise JsonInvalid(_locate_number(text), str(exc)) from exc
    except RecursionError as exc:
        raise JsonInvalid(_locate_depth(text) or 0, DEPTH_ERROR) from exc
    fault = value_fault(text, 0, len(text), value)
    if fault is not None:
        raise fault
    return value


def read_value(text: str, index: int, depth: int = 0) -> tuple[Any, int]:
    """The JSON value that starts at `text[index]` and the index just past it,
    read as `parse` reads a document, for a value nested `depth` levels deep in
    one. What `parse` refuses while reading is JsonInvalid at an index of `text`;
    what it refuses after (`value_fault`) is not looked for."""
    try:
        value, end = _DECODER.raw_decode(text, index)
    except json.JSONDecodeError as exc:
        raise JsonInvalid(exc.pos, exc.msg) from exc
    except _Refused as exc:
        raise JsonInvalid(_locate_number(text, index), str(exc)) from exc
    except RecursionError as exc:
        raise JsonInvalid(_locate_depth(text, index, depth) or index, DEPTH_ERROR) from exc
    return value, end


def value_fault(text: str, start: int, end: int, value: Any, depth: int = 0) -> JsonInvalid | None:
    """What `check_value` refuses in `value`, read from `text[start:end]` at
    `depth` levels deep in its document, located in `text`; None when nothing."""
    if not may_fault(text, start, end, depth):  # most values: skip the walk
        return None
    try:
        check_value(value, depth + 1)
    except ValueError as exc:
        error = str(exc)
        position = locate(error, text, start, end, depth)
        return JsonInvalid(start if position is None else position, error)
    return None


def may_fault(text: str, start: int, end: int, depth: int = 0) -> bool:
    """Whether the text of a value can hold what `check_value` refuses."""
    brackets = text.count("[", start, end) + text.count("{", start, end)
    return depth + brackets > MAX_DEPTH or bool(_SURROGATE_ESCAPE.search(text, start, end))


def locate(error: str, text: str, start: int, end: int, depth: int = 0) -> int | None:
    """Where in the text of a value the first cause of a `check_value` error is:
    a bracket too deep or a lone surrogate; None if there is none."""
    if error == DEPTH_ERROR:
        return _locate_depth(text, start, depth, end)
    return lone_surrogate_at(text, start, end)


def check_value(value: Any, depth: int = 1) -> None:
    """Refuse, with ValueError, what a parser let through but cannot be kept:
    nesting deeper than 64, lone surrogates, out-of-range numbers. `depth` is
    the level of `value` itself in its document (1 for the document)."""
    stack: list[tuple[Any, int]] = [(value, depth)]
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
        raise ValueError(LONE_SURROGATE) from exc


def _locate_depth(text: str, start: int = 0, depth: int = 0, end: int | None = None) -> int | None:
    """Where the first bracket deeper than the limit is, from `text[start]`
    (a value `depth` levels deep); None if there is none before `end`."""
    for match in _TOKEN.finditer(text, start, len(text) if end is None else end):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in "]}":
            depth -= 1
    return None


def _locate_number(text: str, start: int = 0) -> int:
    """Where the number or constant that the parser refused is: the first one
    refused from `text[start]` (the text is valid JSON up to it)."""
    for match in _NUMBER.finditer(text, start):
        token = match.group()
        if token[0] == '"':
            continue
        try:
            if token[-1] in "Ny":  # NaN, Infinity, -Infinity
                _reject_constant(token)
            (_check_float if any(c in token for c in ".eE") else _check_int)(token)
        except _Refused:
            return match.start()
    return start


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def lone_surrogate_at(text: str, start: int = 0, end: int | None = None) -> int | None:
    """Where the first escaped surrogate without its pair is, in the strings of
    JSON text read from `text[start]` (where a value starts); None if none."""
    for string in _STRING.finditer(text, start, len(text) if end is None else end):
        if not _SURROGATE_ESCAPE.search(text, string.start(), string.end()):
            continue
        high = -1  # where an escaped high surrogate waits for its low one
        for escape in _ESCAPE.finditer(text, string.start() + 1, string.end() - 1):
            code = int(escape.group(1), 16) if escape.group(1) else 0
            if 0xDC00 <= code <= 0xDFFF and high >= 0 and escape.start() == high + 6:
                high = -1  # a pair
            elif high >= 0:
                return high
            elif 0xDC00 <= code <= 0xDFFF:
                return escape.start()
            elif 0xD800 <= code <= 0xDBFF:
                high = escape.start()
        if high >= 0:
            return high
    return None
