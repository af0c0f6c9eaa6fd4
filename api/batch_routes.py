"""What a batch line asks for, from its OpenAI Batch `method` and `url`.

`POST /v1/assistants` (the default) creates, `POST /v1/assistants/{id}`
modifies and `DELETE /v1/assistants/{id}` deletes; a DELETE line has no body
(absent, null or `{}`). Whether the assistant exists is that line's result
(404), as for any field problem inside a body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

METHODS = ("POST", "DELETE")
_ID = r"[A-Za-z0-9_-]{1,255}"
PATTERNS = {"POST": rf"^/v1/assistants(?:/{_ID})?$", "DELETE": rf"^/v1/assistants/{_ID}$"}
PREFIX = "/v1/assistants/"


@dataclass(frozen=True)
class Route:
    op: str | None = None  # None: a create; else "modify" or "delete"
    target: str | None = None  # the assistant a modify or delete changes


def route(line: dict[str, Any], loc: list[Any]) -> Route | list[dict[str, Any]]:
    """The line's operation, or the 422 entries of what is wrong with it."""
    method = line.get("method", "POST")
    if method not in METHODS:
        return [
            {
                "type": "literal_error",
                "loc": [*loc, "method"],
                "msg": "Input should be 'POST' or 'DELETE'",
                "input": method,
                "ctx": {"expected": "'POST' or 'DELETE'"},
            }
        ]
    errors: list[dict[str, Any]] = []
    url = line.get("url", "/v1/assistants" if method == "POST" else None)
    if url is None:
        errors.append(
            {"type": "missing", "loc": [*loc, "url"], "msg": "Field required", "input": line}
        )
    elif not isinstance(url, str):
        errors.append(
            {
                "type": "string_type",
                "loc": [*loc, "url"],
                "msg": "Input should be a valid string",
                "input": url,
            }
        )
    elif not re.match(PATTERNS[method], url):
        errors.append(
            {
                "type": "string_pattern_mismatch",
                "loc": [*loc, "url"],
                "msg": f"String should match pattern '{PATTERNS[method]}'",
                "input": url,
                "ctx": {"pattern": PATTERNS[method]},
            }
        )
    if method == "DELETE" and line.get("body") not in (None, {}):
        errors.append(
            {
                "type": "extra_forbidden",
                "loc": [*loc, "body"],
                "msg": "A DELETE request has no body",
                "input": line["body"],
            }
        )
    if errors:
        return errors
    assert isinstance(url, str)
    target = url.removeprefix(PREFIX) if url.startswith(PREFIX) else None
    if target is None:
        return Route()
    return Route("delete" if method == "DELETE" else "modify", target)
