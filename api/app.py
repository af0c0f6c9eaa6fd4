"""The Flask edge: auth, limits, idempotency, one store write, one send."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request

from worker.settings import Settings
from worker.telemetry.stages import Stages

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None) -> Flask:
    from api import (
        assistants,
        auth,
        batches,
        console,
        errors,
        health,
        jobs,
        limits,
        logging_setup,
        metrics,
        models,
        openapi,
        queries,
        webhooks,
    )

    settings = settings or Settings()
    # No app-wide /static: the console serves its own assets under /console.
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["assistant_ingest.settings"] = settings
    # An id with an encoded slash (`/v1/assistants/%2F0`) names nothing: a 404,
    # not a redirect to the path with the slashes merged (another id).
    app.url_map.merge_slashes = False

    @app.before_request
    def assign_request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else "req_" + uuid.uuid4().hex
        g.stages = Stages()

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    logging_setup.register(app)
    metrics.register(app)
    errors.register(app)
    auth.register(app)
    console.register(app)  # right after auth: its session's tenant is the key's
    limits.register(app, settings)  # after auth: 401 comes before 429
    queries.register(app)  # after both: a query's 422 comes after 401 and 429
    for blueprint in (assistants.bp, jobs.bp, batches.bp, models.bp, health.bp, webhooks.bp):
        app.register_blueprint(blueprint)
    openapi.register(app)
    return app
