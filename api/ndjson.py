"""Streaming NDJSON answers: batch results, dry-run plans, exports."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response, stream_with_context

MIMETYPE = "application/x-ndjson"
# Each chunk a streamed response yields is a write to the socket (and a chunk
# of its transfer encoding); one per line cost more than encoding the line.
BLOCK = 64 << 10


def stream(docs: Iterable[Any]) -> Response:
    """A 200 streaming each of `docs` as a JSON line, in blocks of about BLOCK
    characters, encoded as they are produced (memory stays flat)."""
    return Response(stream_with_context(_blocks(docs)), mimetype=MIMETYPE)


def _blocks(docs: Iterable[Any]) -> Iterator[str]:
    block: list[str] = []
    size = 0
    for doc in docs:
        line = json.dumps(doc, ensure_ascii=False)
        block.append(line)
        size += len(line) + 1
        if size >= BLOCK:
            yield "\n".join(block) + "\n"
            block, size = [], 0
    if block:
        yield "\n".join(block) + "\n"
