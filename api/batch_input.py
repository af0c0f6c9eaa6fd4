"""Reading a batch upload as a stream: one request at a time, never the whole body.

Two forms: JSON Lines (`{"custom_id", "body"}` a line, OpenAI Batch lines
too) and a JSON document `{"requests": [...], "metadata": {...}}`, read
incrementally. Each request's structure is checked here by the BatchRequest
model (a JSON object with a `body`, a `custom_id` of 1 to 64 chars, the
OpenAI method and url if given), and what no model can say, that its
`custom_id` is unique and its body within the single-create limit; the
body's fields are not: that is the worker's job.

JSON text is read by Python's parser with `api.jsonbody`'s rules, a line or
a value at a time, so what a single create refuses as `json_invalid` is
refused in the same words and at the same character offset.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import struct
import tempfile
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from pydantic import TypeAdapter, ValidationError

from api import batch_routes
from api.jsonbody import (
    DEPTH_ERROR,
    LONE_SURROGATE,
    JsonInvalid,
    dump,
    locate,
    may_fault,
    parse,
    read_value,
    value_fault,
)
from api.schemas import BatchCreate, BatchRequest, detail_of
from api.truncation import bounded
from worker.services import planning

MAX_REPORTED = 100

# A request's envelope; its body is the worker's to check.
_LINE: TypeAdapter[BatchRequest] = TypeAdapter(BatchRequest)
# Stands for the requests when the rest of a JSON-form document is validated
# by its model: they are validated one by one as they stream by.
_CHECKED: list[BatchRequest] = [{"body": None}]


class TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Request:
    custom_id: str
    body_text: str
    op: str | None = None  # None: a create; else "modify" or "delete" (`batch_routes`)
    target: str | None = None  # the assistant a modify or delete changes
    # The body as parsed, while the line is read (a spool keeps only its text).
    body: Any = field(default=None, compare=False, repr=False)


@dataclass
class Reader:
    """Checks requests as they stream by; collects up to 100 errors."""

    max_bytes: int
    max_body_bytes: int
    # An apply batch: every line needs a custom_id (it names the assistant),
    # and every line is an apply of a create body.
    apply: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    count: int = 0
    size: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    _custom_ids: dict[str, int] = field(default_factory=dict)

    @property
    def custom_ids(self) -> set[str]:
        """Every custom_id the upload gave (an apply batch's names)."""
        return set(self._custom_ids)

    @property
    def names(self) -> Container[str]:
        """The custom_ids read so far, kept up to date as the upload is read."""
        return self._custom_ids.keys()

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
        # Parsing a large upload is seconds of CPU: the process's other
        # requests get turns meanwhile.
        planning.breathe()
        try:
            _LINE.validate_python(value)
        except ValidationError as exc:
            problems = detail_of(exc, *loc)
        else:
            problems = []
        if not isinstance(value, dict):
            self._fail_all(problems)
            return None
        routed = batch_routes.Route()
        if not any(
            entry["loc"][len(loc) : len(loc) + 1] in (["method"], ["url"]) for entry in problems
        ):
            found = batch_routes.route(value, loc)
            if isinstance(found, list):
                problems += found
            else:
                routed = found
        deleting = routed.op == "delete" or value.get("method") == "DELETE"
        if not deleting and "body" not in value:
            problems.append(
                {"type": "missing", "loc": [*loc, "body"], "msg": "Field required", "input": value}
            )
        if self.apply:
            problems += _apply_problems(value, loc, routed)
        custom_id = value.get("custom_id", str(index))
        if not any(entry["loc"][len(loc) : len(loc) + 1] == ["custom_id"] for entry in problems):
            first = self._custom_ids.setdefault(custom_id, index)
            if first != index:
                problems.insert(
                    0,
                    {
                        "type": "duplicate_custom_id",
                        "loc": [*loc, "custom_id"],
                        "msg": f"custom_id is already used by request {first}",
                        "input": custom_id,
                    },
                )
        body_text = "{}"  # a DELETE line's: it has none
        if "body" in value and not deleting:
            body_text = dump(value["body"])
            if len(body_text.encode("utf-8", "surrogatepass")) > self.max_body_bytes:
                problems.append(
                    {
                        "type": "body_too_large",
                        "loc": [*loc, "body"],
                        "msg": f"Request body is larger than {self.max_body_bytes} bytes",
                    }
                )
        if problems:
            self._fail_all(problems)
            return None
        body = None if deleting else value.get("body")
        if self.apply:
            return Request(custom_id, body_text, "apply", body=body)
        return Request(custom_id, body_text, routed.op, routed.target, body)

    def _fail_all(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            self.fail(entry)

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
        """Requests of `{"requests": [...], "metadata": {...}}`, read as a stream.

        The document is read as `jsonbody.parse` reads a single create's body,
        so it is refused in the same words: a document that is not acceptable
        JSON is one `json_invalid` at `["body", <char offset>]` and nothing
        else; a key given twice keeps its last value (a second `requests`
        replaces the first). That is why requests are held back, in a spool
        that moves to disk as it grows, until the document has ended.
        """
        document = _Document(self, _Text(_Counting(stream, self)))
        try:
            document.read()
        except JsonInvalid as exc:
            self.errors, self.error_count, self.count = [exc.detail], 1, 0
            document.spool.close()
            return
        except BaseException:
            document.spool.close()
            raise
        with document.spool:
            if not self.errors:
                yield from document.spool


def _apply_problems(value: dict[str, Any], loc: list[Any], routed: batch_routes.Route) -> list[Any]:
    """What an apply batch also asks of a line: a custom_id, and no other request
    than a create body (the line's own method and url, if any, say so)."""
    problems: list[dict[str, Any]] = []
    if "custom_id" not in value:
        problems.append(
            {
                "type": "missing",
                "loc": [*loc, "custom_id"],
                "msg": "Field required",
                "input": value,
            }
        )
    if routed.op is not None:
        problems.append(
            {
                "type": "string_pattern_mismatch",
                "loc": [*loc, "url"],
                "msg": "String should match pattern '^/v1/assistants$'",
                "input": value.get("url"),
                "ctx": {"pattern": "^/v1/assistants$"},
            }
        )
    return problems


_Missing = object()  # a key the document did not give

# JSON text as Python's parser reads it.
_NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")
_STRING_TAIL = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r'[ \t\n\r,:\[\]{}"]')


class _Document:
    """The JSON form, read in one pass: `read` checks every request as it comes
    (into `spool`), then the rest of the document with the BatchCreate model."""

    def __init__(self, reader: Reader, text: _Text) -> None:
        self.reader = reader
        self.text = text
        self.spool = Spool()
        self.index = 0  # of the next request
        self.top: Any = _Missing  # the document, when it is not an object
        self.requests: Any = _Missing
        self.metadata: Any = _Missing
        self.extra: dict[str, Any] = {}
        # What check_value refuses, by the top-level key whose value holds it:
        # reported (the first one) only if no later value of that key replaces it.
        self.faults: dict[str | None, JsonInvalid] = {}
        # Where each kind of those is first seen anywhere, replaced values too,
        # as a single create locates it in the whole text.
        self.first_seen: dict[str, int] = {}

    def read(self) -> None:
        text = self.text
        text.more()
        if text.size == 0:  # as a single create's empty body
            self.reader.fail(
                {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
            )
            return
        start = self._skip(0)
        if start < len(text.buf) and text.buf[start] == "{":
            end = self._object(start)
        else:  # not an object: read whole, as the model echoes it
            self.top, end = self._value(start, 0, None)
        rest = self._skip(end)
        if rest < len(text.buf):
            self._syntax("{}", end, rest)
        if self.faults:
            fault = min(self.faults.values(), key=lambda fault: fault.position)
            raise JsonInvalid(self.first_seen.get(fault.error, fault.position), fault.error)
        self._check_document()

    def _object(self, start: int) -> int:
        """Reads the document's object from its `{`; the index after its `}`."""
        text = self.text
        prefix, anchor = "", start  # how json would reach the point where a key comes
        i = self._skip(start + 1)
        if i < len(text.buf) and text.buf[i] == "}":
            return i + 1
        while True:
            if i == len(text.buf) or text.buf[i] != '"':
                self._syntax(prefix, anchor, i)
            key_start = i
            key, i = self._key(i)
            colon = self._skip(i)
            if colon == len(text.buf) or text.buf[colon] != ":":
                self._syntax("{", key_start, colon)
            i = self._skip(colon + 1)
            self.faults.pop(key, None)
            if key == "requests" and i < len(text.buf) and text.buf[i] == "[":
                self._start_requests()
                end = self._requests(i)
            else:
                value, end = self._value(i, 1, key)
                if key == "requests":
                    self._start_requests()
                    self.requests = value
                elif key == "metadata":
                    self.metadata = value
                else:
                    self.extra[key] = value
            i = self._skip(end)
            if i < len(text.buf) and text.buf[i] == "}":
                return i + 1
            if i == len(text.buf) or text.buf[i] != ",":
                self._syntax('{"":0', end, i)
            prefix, anchor = '{"":0', i
            i = self._skip(i + 1)
            if anchor > _KEEP:
                shift = text.drop(anchor)
                anchor, i = anchor - shift, i - shift

    def _requests(self, start: int) -> int:
        """Reads the requests array from its `[`; the index after its `]`."""
        text = self.text
        i = self._skip(start + 1)
        if i < len(text.buf) and text.buf[i] == "]":
            return i + 1
        if i == len(text.buf):
            self._syntax('{"":', start, i)
        while True:
            value, end = self._value(i, 2, "requests")
            request = self.reader.check_request(value, ["body", "requests", self.index], self.index)
            if request is not None:
                self.spool.add(request)
            self.index += 1
            i = self._skip(end)
            if i < len(text.buf) and text.buf[i] == "]":
                return i + 1
            if i == len(text.buf) or text.buf[i] != ",":
                self._syntax('{"":[0', end, i)
            comma = i
            i = self._skip(i + 1)
            if i == len(text.buf) or text.buf[i] == "]":  # a trailing comma
                self._syntax('{"":[0', comma, i)
            if comma > _KEEP:
                shift = text.drop(comma)
                i -= shift

    def _start_requests(self) -> None:
        """A `requests` key: it replaces what an earlier one gave."""
        reader = self.reader
        reader.count = reader.error_count = self.index = 0
        reader.errors.clear()
        reader._custom_ids.clear()
        self.spool.clear()
        self.requests = _CHECKED

    def _check_document(self) -> None:
        """The document but its requests, by the BatchCreate model."""
        reader = self.reader
        shell: Any = self.top
        if shell is _Missing:
            shell = dict(self.extra)
            if self.requests is not _Missing:
                shell["requests"] = self.requests
            if self.metadata is not _Missing:
                shell["metadata"] = self.metadata
        try:
            document = BatchCreate.model_validate(shell, from_attributes=True)
        except ValidationError as exc:
            reader._fail_all(detail_of(exc, "body"))
        else:
            reader.metadata = document.metadata or {}

    # -- reading JSON text ---------------------------------------------------

    def _skip(self, i: int) -> int:
        """The index of the next character that is not whitespace from `i`; at
        the end of the document, the length of the text."""
        text = self.text
        while True:
            found = _NOT_WHITESPACE.search(text.buf, i)
            if found is not None:
                return found.start()
            i = len(text.buf)
            if not text.more():
                return i

    def _key(self, i: int) -> tuple[str, int]:
        """The key whose string starts at `i`, and the index after it."""
        key, end = self._value(i, 1, None)  # what is wrong in a key is never replaced
        return key, end

    def _value(self, i: int, depth: int, key: str | None) -> tuple[Any, int]:
        """The value at `i` (not whitespace), `depth` levels deep in the document,
        and the index after it; reads on while the text so far ends inside it."""
        text = self.text
        while True:
            try:
                value, end = read_value(text.buf, i, depth)
            except JsonInvalid as exc:
                incomplete = exc.error != DEPTH_ERROR and _extent(text.buf, i) is None
                if incomplete and text.more(len(text.buf) - i):
                    continue
                self._fail(exc)
            # A number (or a literal) may go on in text not read yet.
            if isinstance(value, dict | list | str) or _extent(text.buf, i) is not None:
                break
            if not text.more(len(text.buf) - i):
                break
        if may_fault(text.buf, i, end, depth):
            fault = value_fault(text.buf, i, end, value, depth)
            if fault is not None:
                self.faults.setdefault(key, self._at(fault))
            for error in (DEPTH_ERROR, LONE_SURROGATE):
                position = locate(error, text.buf, i, end, depth)
                if position is not None:
                    self.first_seen.setdefault(error, text.base + position)
        return value, end

    def _syntax(self, prefix: str, anchor: int, at: int) -> NoReturn:
        """Refuses the text from `anchor` to the character at `at` as Python's
        parser does: it reads `prefix` (which takes it to the same point of a
        document) and that text, and its error is mapped back."""
        piece = self.text.buf[anchor : at + 1]
        try:
            json.loads(prefix + piece)
        except json.JSONDecodeError as exc:
            position = anchor + max(exc.pos - len(prefix), 0)
            self._fail(JsonInvalid(position, exc.msg))
        self._fail(JsonInvalid(at, "Invalid JSON"))  # not reached: the piece is invalid

    def _at(self, fault: JsonInvalid) -> JsonInvalid:
        """The fault at its offset in the document, not in the text held now."""
        return JsonInvalid(self.text.base + fault.position, fault.error)

    def _fail(self, fault: JsonInvalid) -> NoReturn:
        located = self._at(fault)
        # A single create refuses invalid UTF-8 anywhere first: read to the end.
        self.text.drain()
        raise located


def _extent(buf: str, i: int) -> int | None:
    """The index just past the value that starts at `buf[i]`, or None when the
    text ends inside it (more may come). Brackets are counted, not matched: if
    the value is not valid JSON, this is only where its reading stops."""
    if i >= len(buf):
        return None
    first = buf[i]
    if first == '"':
        string = _STRING_TAIL.match(buf, i + 1)
        return None if string is None else string.end()
    if first not in "[{":
        stop = _SCALAR_END.search(buf, i)
        return None if stop is None else stop.start()
    depth, j = 0, i
    while True:
        found = _STRUCTURE.search(buf, j)
        if found is None:
            return None
        j = found.end()
        char = found.group()
        if char == '"':
            string = _STRING_TAIL.match(buf, j)
            if string is None:
                return None
            j = string.end()
        elif char in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return j


_READ = 1 << 18  # bytes read at a time
_KEEP = 1 << 18  # text kept behind the reading point before it is dropped


class _Text:
    """The upload decoded as it is read. `buf` holds the text from offset
    `base` of the document, counted in characters after a leading BOM, as
    `jsonbody.parse` counts them; it grows as `more` reads and is cut by `drop`."""

    def __init__(self, source: _Counting) -> None:
        self._source = source
        self.buf = ""
        self.base = 0
        self.size = 0  # bytes read
        self._decoded = 0  # characters decoded, a BOM too: where invalid UTF-8 is
        self._undecoded = b""  # the start of a character cut by a read
        self._at_start = True
        self._ended = False

    def more(self, at_least: int = 1) -> bool:
        """Reads on, at least `at_least` bytes unless the upload ends first;
        False when it had already ended."""
        if self._ended:
            return False
        added: list[str] = []
        wanted = max(at_least, _READ)
        while wanted > 0 and not self._ended:
            data = self._source.read(wanted)
            self.size += len(data)
            wanted -= len(data)
            added.append(self._decode(data, final=not data))
            self._ended = not data
        self.buf += "".join(added)
        return True

    def drop(self, index: int) -> int:
        """Forgets the text before `buf[index]`; indexes move down by what it returns."""
        self.buf = self.buf[index:]
        self.base += index
        return index

    def drain(self) -> None:
        """Reads to the end, refusing invalid UTF-8 (and a body over the limit)."""
        while not self._ended:
            self.drop(len(self.buf))
            self.more()

    def _decode(self, data: bytes, final: bool) -> str:
        raw = self._undecoded + data
        try:
            text, used = codecs.utf_8_decode(raw, "strict", final)
        except UnicodeDecodeError as exc:
            position = self._decoded + len(raw[: exc.start].decode("utf-8", "replace"))
            while self._source.read(_READ):  # a body over the limit is a 413 first
                pass
            raise JsonInvalid(position, "Invalid UTF-8 in request body") from exc
        self._undecoded = raw[used:]
        self._decoded += len(text)
        if self._at_start and (text or final):
            self._at_start = False
            if text.startswith("\ufeff"):  # not part of the document
                text = text[1:]
        return text


class Spool:
    """Requests held until the upload has ended: in memory, then on disk."""

    _HEADER = struct.Struct("<IIII")

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115

    def add(self, request: Request) -> None:
        parts = [
            text.encode("utf-8", "surrogatepass")
            for text in (
                request.custom_id,
                request.body_text,
                request.op or "",
                request.target or "",
            )
        ]
        self._file.write(self._HEADER.pack(*(len(part) for part in parts)) + b"".join(parts))

    def clear(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def __iter__(self) -> Iterator[Request]:
        self._file.seek(0)
        while header := self._file.read(self._HEADER.size):
            custom_id, body, op, target = (
                self._file.read(size).decode("utf-8", "surrogatepass")
                for size in self._HEADER.unpack(header)
            )
            yield Request(custom_id, body, op or None, target or None)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Counting:
    """A file-like view of the upload that enforces the size limit and hashes it."""

    def __init__(self, stream: IO[bytes], reader: Reader) -> None:
        self._stream = stream
        self._reader = reader

    def read(self, size: int = 65536) -> bytes:
        data = self._stream.read(min(size, 1 << 20))
        self._reader._consume(data)
        return data


# What an upload is read in: blocks, split here. gunicorn's readline reads its
# body 1 KiB at a time and copies its buffer on every call: 50 MB of 1 KB lines
# took it 2 s, blocks of this size 0.1 s.
READ_BLOCK = 1 << 16


def _lines(stream: IO[bytes], consume: Callable[[bytes], None]) -> Iterator[bytes]:
    """The lines of `stream`, each with its newline, read in blocks that `consume`
    sees first (it enforces the size limit).

    Lines are handed on block by block, so an upload is stored as it streams in.
    A long line is put together in one growing buffer from the blocks it spans,
    not from the server's 1 KiB reads held all at once.
    """
    pending = bytearray()
    while block := stream.read(READ_BLOCK):
        consume(block)
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            if pending:
                pending += block[start : end + 1]
                line, pending = bytes(pending), bytearray()  # one copy alive, not two
                yield line
            else:
                yield block[start : end + 1]
            start = end + 1
        pending += block[start:]
    if pending:
        yield bytes(pending)
