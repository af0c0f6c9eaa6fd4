"""Reading a batch upload as a stream: one request at a time, never the whole body.

Two forms: JSON Lines (`{"custom_id", "body"}` a line, OpenAI Batch lines
too) and a JSON document `{"requests": [...], "metadata": {...}}`, read
incrementally. Each request's structure is checked here (a JSON object with
a `body`, a unique `custom_id` of 1 to 64 chars, the OpenAI method and url
if given, a body within the single-create limit); its fields are not: that
is the worker's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import ijson

from api.jsonbody import JsonInvalid, check_value, parse
from api.truncation import bounded

MAX_REPORTED = 100
LINE_KEYS = {"custom_id", "method", "url", "body"}


class TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Request:
    custom_id: str
    body_text: str


@dataclass
class Reader:
    """Checks requests as they stream by; collects up to 100 errors."""

    max_bytes: int
    max_body_bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    count: int = 0
    size: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    _custom_ids: dict[str, int] = field(default_factory=dict)

    def fail(self, entry: dict[str, Any]) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(bounded(entry))

    def _consume(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLarge
        self.digest.update(data)

    def check_request(self, value: Any, loc: list[Any], index: int) -> Request | None:
        """The request at `loc`, or None after recording why it is refused."""
        self.count += 1
        if not isinstance(value, dict):
            self.fail(
                {
                    "type": "dict_type",
                    "loc": loc,
                    "msg": "Input should be a valid dictionary",
                    "input": value,
                }
            )
            return None
        ok = True
        for key in value:
            if key not in LINE_KEYS:
                self.fail(
                    {
                        "type": "extra_forbidden",
                        "loc": [*loc, key],
                        "msg": "Extra inputs are not permitted",
                        "input": value[key],
                    }
                )
                ok = False
        for key, expected in (("method", "POST"), ("url", "/v1/assistants")):
            if key in value and value[key] != expected:
                self.fail(
                    {
                        "type": "literal_error",
                        "loc": [*loc, key],
                        "msg": f"Input should be '{expected}'",
                        "input": value[key],
                        "ctx": {"expected": f"'{expected}'"},
                    }
                )
                ok = False
        custom_id = value.get("custom_id", str(index))
        if not isinstance(custom_id, str):
            self.fail(
                {
                    "type": "string_type",
                    "loc": [*loc, "custom_id"],
                    "msg": "Input should be a valid string",
                    "input": custom_id,
                }
            )
            ok = False
        elif not 1 <= len(custom_id) <= 64:
            kind, msg = (
                ("string_too_short", "String should have at least 1 character")
                if not custom_id
                else ("string_too_long", "String should have at most 64 characters")
            )
            self.fail(
                {
                    "type": kind,
                    "loc": [*loc, "custom_id"],
                    "msg": msg,
                    "input": custom_id,
                    "ctx": {"min_length": 1} if not custom_id else {"max_length": 64},
                }
            )
            ok = False
        elif custom_id in self._custom_ids:
            self.fail(
                {
                    "type": "duplicate_custom_id",
                    "loc": [*loc, "custom_id"],
                    "msg": f"custom_id is already used by request {self._custom_ids[custom_id]}",
                    "input": custom_id,
                }
            )
            ok = False
        else:
            self._custom_ids[custom_id] = index
        if "body" not in value:
            self.fail(
                {"type": "missing", "loc": [*loc, "body"], "msg": "Field required", "input": value}
            )
            return None
        body_text = json.dumps(value["body"], ensure_ascii=False, separators=(",", ":"))
        if len(body_text.encode("utf-8", "surrogatepass")) > self.max_body_bytes:
            self.fail(
                {
                    "type": "body_too_large",
                    "loc": [*loc, "body"],
                    "msg": f"Request body is larger than {self.max_body_bytes} bytes",
                }
            )
            return None
        return Request(custom_id, body_text) if ok else None

    def jsonl(self, stream: IO[bytes]) -> Iterator[Request]:
        """Requests of a JSON Lines upload; lines are numbered from 0, blank ones skipped."""
        for number, raw in enumerate(_lines(stream, self._consume)):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if number == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():
                try:
                    value = parse(line)
                except JsonInvalid as exc:
                    self.count += 1
                    detail = dict(exc.detail)
                    detail["loc"] = ["body", number, exc.detail["loc"][1]]
                    self.fail(detail)
                else:
                    request = self.check_request(value, ["body", number], number)
                    if request is not None:
                        yield request

    def json_document(self, stream: IO[bytes]) -> Iterator[Request]:
        """Requests of `{"requests": [...], "metadata": {...}}`, parsed incrementally."""
        reader = _Counting(stream, self)
        builder: Any = None
        building = ""  # the prefix of the value being built
        depth = index = 0
        seen_requests = False
        try:
            for prefix, event, value in ijson.parse(reader, use_float=True):
                if builder is None:
                    if prefix == "" and event in ("start_map", "map_key", "end_map"):
                        continue
                    if prefix == "":
                        self.fail(
                            {
                                "type": "model_attributes_type",
                                "loc": ["body"],
                                "msg": "Input should be a valid dictionary or object to "
                                "extract fields from",
                                "input": value,
                            }
                        )
                        return
                    if prefix == "requests" and event in ("start_array", "end_array"):
                        seen_requests = True
                        continue
                    builder, building, depth = ijson.ObjectBuilder(), prefix, 0
                builder.event(event, value)
                depth += event in ("start_map", "start_array")
                depth -= event in ("end_map", "end_array")
                if depth == 0:
                    yield from self._document_value(building, builder.value, index)
                    index += building == "requests.item"
                    builder = None
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            # The parser hands on an escaped lone low surrogate as bytes that
            # do not decode; every other fault of the text is a JSONError.
            error = "Lone surrogate in string" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self.fail(JsonInvalid(reader.position, error or "Invalid JSON").detail)
            return
        if not seen_requests and not self.errors:
            self.fail(
                {
                    "type": "missing",
                    "loc": ["body", "requests"],
                    "msg": "Field required",
                    "input": {},
                }
            )

    def _document_value(self, prefix: str, value: Any, index: int) -> Iterator[Request]:
        item = prefix == "requests.item"
        try:
            # Every value, not only requests: a 422 echoes what it refuses,
            # which must be something an answer can hold.
            check_value(value)
        except ValueError as exc:
            self.count += item
            self.fail(
                {
                    "type": "json_invalid",
                    "loc": ["body", "requests", index] if item else ["body", prefix],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(exc)},
                }
            )
            return
        if item:
            request = self.check_request(value, ["body", "requests", index], index)
            if request is not None:
                yield request
        elif prefix == "requests":
            self.fail(
                {
                    "type": "list_type",
                    "loc": ["body", "requests"],
                    "msg": "Input should be a valid list",
                    "input": value,
                }
            )
        elif prefix == "metadata":
            self.metadata = self._check_metadata(value)
        else:
            self.fail(
                {
                    "type": "extra_forbidden",
                    "loc": ["body", prefix],
                    "msg": "Extra inputs are not permitted",
                    "input": value,
                }
            )

    def _check_metadata(self, value: Any) -> dict[str, Any]:
        loc = ["body", "metadata"]
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(
                {
                    "type": "dict_type",
                    "loc": loc,
                    "msg": "Input should be a valid dictionary",
                    "input": value,
                }
            )
            return {}
        if len(value) > 16:
            self.fail(
                {
                    "type": "too_long",
                    "loc": loc,
                    "msg": f"Dictionary should have at most 16 items after validation, "
                    f"not {len(value)}",
                    "input": value,
                    "ctx": {
                        "field_type": "Dictionary",
                        "max_length": 16,
                        "actual_length": len(value),
                    },
                }
            )
        for key, item in value.items():
            if len(key) > 64:
                self.fail(
                    {
                        "type": "string_too_long",
                        "loc": [*loc, key, "[key]"],
                        "msg": "String should have at most 64 characters",
                        "input": key,
                        "ctx": {"max_length": 64},
                    }
                )
            if not isinstance(item, str):
                self.fail(
                    {
                        "type": "string_type",
                        "loc": [*loc, key],
                        "msg": "Input should be a valid string",
                        "input": item,
                    }
                )
            elif len(item) > 512:
                self.fail(
                    {
                        "type": "string_too_long",
                        "loc": [*loc, key],
                        "msg": "String should have at most 512 characters",
                        "input": item,
                        "ctx": {"max_length": 512},
                    }
                )
        return value


def _lines(stream: IO[bytes], consume: Callable[[bytes], None]) -> Iterator[bytes]:
    """The lines of `stream`, each with its newline, read in large blocks that
    `consume` sees first (it enforces the size limit).

    Not `readline`: servers hand a line over in 1 KiB pieces, and the heap
    they fragment stays with the process after a long line; large blocks are
    given back.
    """
    pending = bytearray()
    while data := stream.read(1 << 20):
        consume(data)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if pending:
                pending += data[start : end + 1]
                line, pending = bytes(pending), bytearray()  # one copy alive, not two
                yield line
            else:
                yield data[start : end + 1]
            start = end + 1
        pending += data[start:]
    if pending:
        yield bytes(pending)


class _Counting:
    """A file-like view of the upload that enforces the size limit and hashes it."""

    def __init__(self, stream: IO[bytes], reader: Reader) -> None:
        self._stream = stream
        self._reader = reader
        self.position = 0

    def read(self, size: int = 65536) -> bytes:
        data = self._stream.read(min(size, 1 << 20))
        self._reader._consume(data)
        self.position += len(data)
        return data
