"""Structured logs: one JSON object a line, with the context of the work at hand.

Entry points call `configure()`; nothing here runs at import. Fields bound with
`bind()` (the request id at the edge) appear on every line logged in that
context, so one request can be followed from the edge to the worker. Secrets
never belong in a log line; as a second line of defence anything shaped like
an API key, a webhook secret or a bearer credential is masked on the way out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

_SECRETS = re.compile(r"(aik_[A-Za-z0-9_\-]+|whsec_[A-Za-z0-9+/=]+|(?i:bearer)\s+[^\s\"',;]+)")


# What str.splitlines() and many log viewers take for a line break but JSON
# leaves raw (with ensure_ascii off): escaped, so that nothing a client sends
# (a path, say) can split a line or forge one.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


def bind(**fields: Any) -> contextvars.Token[dict[str, Any]]:
    """Add fields to every line logged in the current context until `unbind`."""
    return _context.set({**_context.get({}), **fields})


def unbind(token: contextvars.Token[dict[str, Any]]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(_context.get({}))
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(entry, ensure_ascii=False, default=str).translate(_LINE_BREAKS))


def handler_config(level: str, quiet: tuple[str, ...] = ()) -> dict[str, Any]:
    """A `logging.config.dictConfig` sending every logger to stderr as JSON;
    the `quiet` loggers say only warnings unless the level is DEBUG."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": "DEBUG" if level == "DEBUG" else "WARNING"} for name in quiet},
    }


# Celery's line per task received and run, and beat's per task sent: the
# periodic sweeps alone would say several a second.
CELERY_CHATTER = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def configure(level: str = "INFO", quiet: tuple[str, ...] = ()) -> None:
    """Send every log line of this process to stderr as JSON."""
    import logging.config

    logging.config.dictConfig(handler_config(level, quiet))
    logging.captureWarnings(True)
