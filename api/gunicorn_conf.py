"""gunicorn's configuration for the edge:

    gunicorn -c python:api.gunicorn_conf 'api.app:create_app()'

Command-line options and GUNICORN_CMD_ARGS override what is set here, as
gunicorn does for every configuration file. The hooks give every process
JSON logs, share the workers' metrics through one folder, and make the
store's indexes before the first request.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import tempfile
from typing import Any

from api.logging_setup import gunicorn_config
from worker.settings import Settings

bind = ["0.0.0.0:8000"]
workers = 2
# gevent: a `Prefer: wait` request, a result stream or a slow client holds a
# greenlet, not a thread (api/serving.py), so thousands cost almost nothing.
worker_class = "api.serving.EdgeWorker"
worker_connections = 4000
# A request's headers must arrive within this many seconds, and an idle
# kept-alive connection is closed after it.
keepalive = 5
# Above the longest wait (60 s) and a long results stream.
timeout = 300
graceful_timeout = 30
# The proxies whose forwarding headers are believed: FORWARDED_ALLOW_IPS, as the
# edge reads it for the real client (api/serving.py), so gunicorn's own reading
# of X-Forwarded-Proto agrees with it (and trusts no one when it is empty,
# where gunicorn alone would trust 127.0.0.1).
forwarded_allow_ips = ",".join(Settings().forwarded_allow_ips)
# The app writes its own access line (with the request id, as JSON); gunicorn
# neither writes nor builds one.
accesslog = None
logger_class = "api.serving.EdgeLogger"
# One control socket per user would be shared by every edge on the host.
control_socket_disable = True
# gunicorn's own loggers as JSON too; its access log is replaced by the app's.
logconfig_dict = gunicorn_config(Settings().log_level)

_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server: Any) -> None:
    from worker.telemetry import logs

    settings = Settings()
    logs.configure(settings.log_level)
    if settings.metrics_port:
        # /metrics on a port of its own, kept off the API's public one (api/metrics.py).
        metrics_bind = f"0.0.0.0:{settings.metrics_port}"
        if metrics_bind not in server.cfg.bind:
            server.cfg.set("bind", [*server.cfg.bind, metrics_bind])
    if not os.environ.get(_METRICS_DIR):
        # prometheus_client reads this when first imported: in each worker, after fork.
        os.environ[_METRICS_DIR] = tempfile.mkdtemp(prefix="assistant-ingest-metrics-")
        server._metrics_dir_made = os.environ[_METRICS_DIR]


# Signals that stop a worker; gunicorn's worker handles them from its
# init_signals on, once gevent is patched in and its settings are read.
_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def post_fork(server: Any, worker: Any) -> None:
    # Until the worker installs its own handlers, a stop signal reaches the
    # arbiter's, inherited across the fork, which only queues it: a worker
    # stopped while it boots would serve on until the arbiter's graceful
    # timeout (30 s) killed it. Here such a stop is kept, and once booted the
    # worker goes at once.
    def stop(_signum: int, _frame: Any) -> None:
        worker.alive = False

    for sig in _STOPS:
        signal.signal(sig, stop)
    # Any that came between the fork and here is in the arbiter's queue.
    while True:
        try:
            if server.SIG_QUEUE.get_nowait() in _STOPS:
                worker.alive = False
        except queue.Empty:
            break


def post_worker_init(worker: Any) -> None:
    # In each worker, once gevent has patched it: the store's driver is never
    # imported by the arbiter, so it never runs unpatched.
    from worker.store.connection import Store
    from worker.store.indexes import ensure_indexes

    store = Store.connect(Settings(), timeout_ms=30_000)
    try:
        ensure_indexes(store)
    finally:
        store.close()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    made = getattr(server, "_metrics_dir_made", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
