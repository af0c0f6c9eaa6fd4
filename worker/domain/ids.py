"""Public ids: a prefix and 24 random characters of [A-Za-z0-9]."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
RANDOM_CHARS = 24


def new_id(prefix: str) -> str:
    return new_ids(prefix, 1)[0]


def new_ids(prefix: str, count: int) -> list[str]:
    # One call to the system RNG for many ids: a 50,000-line batch needs 50,000.
    raw = secrets.token_bytes(count * RANDOM_CHARS)
    # 248 = 4 * 62, so mapping bytes below 248 modulo 62 keeps the choice uniform;
    # bytes above it are rare and replaced from a fresh draw.
    chars = [_ALPHABET[b % 62] if b < 248 else secrets.choice(_ALPHABET) for b in raw]
    joined = "".join(chars)
    return [prefix + joined[i : i + RANDOM_CHARS] for i in range(0, len(joined), RANDOM_CHARS)]
