"""How much of a refused value a 422 entry echoes back.

A batch line error echoes what it refuses in `input`, as FastAPI does. A line
can be as large as the upload, so an entry keeps at most `ECHO_BYTES` of it
(bytes of the JSON answered) and says so with `ctx.input_truncated`; object
keys named in `loc` are cut the same way (`ctx.loc_truncated`). With at most
100 entries, a 422 stays under a fixed size whatever the lines hold, and an
entry keeps nothing of the line alive once it is recorded.
"""

from __future__ import annotations

import json
from typing import Any

ECHO_BYTES = 1024


def bounded(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with its `input` and the strings of its `loc` cut to `ECHO_BYTES`."""
    flags: dict[str, bool] = {}
    if "input" in entry:
        value, _, cut = clip(entry["input"], ECHO_BYTES)
        if cut:
            entry = {**entry, "input": value}
            flags["input_truncated"] = True
    loc = [
        clip(part, ECHO_BYTES) if isinstance(part, str) else (part, 0, False)
        for part in entry["loc"]
    ]
    if any(cut for _, _, cut in loc):
        entry = {**entry, "loc": [part for part, _, _ in loc]}
        flags["loc_truncated"] = True
    if flags:
        entry["ctx"] = {**(entry.get("ctx") or {}), **flags}
    return entry


def clip(value: Any, budget: int) -> tuple[Any, int, bool]:
    """`value` cut to at most about `budget` bytes of JSON: long strings are
    shortened, and containers keep only the members that fit. Returns the
    value, the bytes it takes, and whether anything was cut.

    Nothing larger than the budget is ever serialised, so a huge value costs
    no copy of itself.
    """
    if isinstance(value, str):
        # Every character takes at least one byte, so a longer string is cut unmeasured.
        size = _size(value) if len(value) <= budget else budget + 1
        if size <= budget:
            return value, size, False
        short = value[: max(0, budget - 2)]
        while short and (size := _size(short)) > budget:
            short = short[: len(short) * budget // size - 1]
        return short, _size(short), True
    if isinstance(value, dict | list):
        pairs = value.items() if isinstance(value, dict) else ((None, item) for item in value)
        kept: list[tuple[Any, Any]] = []
        used, cut = 2, False
        for key, item in pairs:
            # A member costs its key and a colon (in an object), and a comma.
            key_size = 0 if key is None else _size(key) + 1 if len(key) < budget else budget
            room = budget - used - key_size - 1
            item_value, item_size, cut = clip(item, room) if room > 0 else (None, 0, True)
            if cut and not isinstance(item, str | dict | list):
                break  # a number or a constant is kept whole or not at all
            kept.append((key, item_value))
            used += key_size + item_size + 1
            if cut:
                break
        if isinstance(value, dict):
            return dict(kept), used, cut
        return [item for _, item in kept], used, cut
    size = _size(value)
    return (value, size, False) if size <= budget else (None, 4, True)


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
