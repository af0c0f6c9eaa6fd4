"""`/metrics`: Prometheus text for the edge, and the counting of every request.

Under gunicorn the `api` command sets PROMETHEUS_MULTIPROC_DIR, so each worker
process writes its samples to a file and a scrape of any one of them reads all.

With METRICS_PORT set, gunicorn also listens there (api/gunicorn_conf.py) and
`/metrics` is served on that port only, beside `/healthz` and `/readyz`, so the
API's public port never shows it; without it, `/metrics` is on the API's port.
"""

from __future__ import annotations

import re
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from api.context import runtime, settings
from api.errors import not_found
from worker.telemetry import exposition

bp = Blueprint("metrics", __name__)

REQUESTS = Counter(
    "assistant_ingest_http_requests_total",
    "HTTP requests answered by the edge, by method (unknown ones as other), route template "
    "and status.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "assistant_ingest_http_request_duration_seconds",
    "Seconds the edge took to answer (until the body starts, for streams).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


# The methods HTTP defines (RFC 9110, and PATCH); any other is counted as
# "other", so a client cannot make series by making up methods.
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


def method() -> str:
    return request.method if request.method in METHODS else "other"


# A variable's converter is how it is matched, not what it names.
_CONVERTER = re.compile(r"<[^:<>]+:([^<>]+)>")


def route() -> str:
    """The matched route template, so ids do not make a series each."""
    rule = request.url_rule
    return _CONVERTER.sub(r"<\1>", rule.rule) if rule is not None else "unmatched"


def register(app: Flask) -> None:
    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def keep_ports_apart() -> None:
        # Before auth: with a metrics port, it serves /metrics (and the health
        # checks) and no API route, and the API port no /metrics, whoever asks.
        port = settings().metrics_port
        if not port or request.path in ("/healthz", "/readyz"):
            return
        on_metrics_port = request.environ.get("SERVER_PORT") == str(port)
        if (request.path == "/metrics") != on_metrics_port:
            raise not_found()

    @app.after_request
    def count(response: Response) -> Response:
        verb, path = method(), route()
        REQUESTS.labels(verb, path, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            REQUEST_SECONDS.labels(verb, path).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
def scrape() -> Response:
    depth = exposition.QueueDepth(runtime().redis, settings().redis_prefix)
    return Response(generate_latest(exposition.registry(depth)), content_type=CONTENT_TYPE_LATEST)
