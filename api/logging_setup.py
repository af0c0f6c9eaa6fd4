"""Log lines of the edge: every line of a request carries its request id, and
each request ends with one access line naming the job or batch it created.

Formatting and handlers are the entry point's business (`worker.logs.configure`);
this only binds the request's context and writes the access line. Headers are
never logged: they carry the API key.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from worker.telemetry import logs

access_log = logging.getLogger("api.access")

_CREATED = {"/v1/jobs/": "job_id", "/v1/batches/": "batch_id"}


def gunicorn_config(level: str) -> dict[str, Any]:
    """Gunicorn's own loggers as JSON too; its access log is replaced by ours."""
    config = logs.handler_config(level)
    config["loggers"].update(
        {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"handlers": [], "propagate": False},
        }
    )
    return config


def register(app: Flask) -> None:
    @app.before_request
    def bind_request_id() -> None:
        g.log_token = logs.bind(request_id=g.request_id)
        g.log_started = time.perf_counter()

    @app.after_request
    def log_access(response: Response) -> Response:
        rule = request.url_rule
        fields = {
            "method": request.method,
            "path": request.path,
            "route": rule.rule if rule is not None else None,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.get("log_started", 0.0)) * 1000, 1),
            "tenant": g.get("tenant"),
        }
        stages = g.get("stages")
        if stages is not None and stages.ms:
            fields["stages_ms"] = stages.ms
        location = response.headers.get("Location", "")
        for prefix, name in _CREATED.items():
            if location.startswith(prefix):
                fields[name] = location.removeprefix(prefix)
        access_log.info(
            "%s %s %s", request.method, request.path, response.status_code, extra=fields
        )
        return response

    @app.teardown_request
    def unbind_request_id(_: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            # A streamed answer tears down in the context it was made in; anything
            # else means the context is gone with its thread already.
            with contextlib.suppress(ValueError):
                logs.unbind(token)
