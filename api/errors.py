"""One place that turns every error into the FastAPI shapes of the origin API."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from worker.services import intake

RETRY_LATER = {"Retry-After": "2"}


class ApiError(Exception):
    """An error answer: `detail` is a message or a list of 422 entries."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def unprocessable(loc: list[Any], type_: str, msg: str, **extra: Any) -> ApiError:
    return ApiError(422, [{"type": type_, "loc": loc, "msg": msg, **extra}])


def not_found(what: str = "Not Found") -> ApiError:
    return ApiError(404, what)


def _answer(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"detail": detail})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _answer(exc.status, exc.detail, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = dict(exc.get_headers())
        headers.pop("Content-Type", None)
        return _answer(exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(intake.Unavailable)
    def unavailable(_: intake.Unavailable) -> Response:
        return _answer(503, "The job could not be stored; nothing was accepted", RETRY_LATER)

    @app.errorhandler(intake.KeyConflict)
    def key_conflict(_: intake.KeyConflict) -> Response:
        return _answer(409, "Idempotency-Key was used with a different request body")

    @app.errorhandler(TimeoutError)
    def too_slow(_: TimeoutError) -> Response:
        # The connection's read timeout passed while the body was being read.
        return _answer(408, "The request body did not arrive in time", {"Connection": "close"})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        from pymongo.errors import PyMongoError

        if isinstance(exc, PyMongoError):
            app.logger.warning("store unavailable: %s", exc)
            return _answer(503, "The store is unavailable; retry later", RETRY_LATER)
        app.logger.exception("unhandled error")
        return _answer(500, "Internal Server Error")
