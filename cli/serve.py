"""Running the processes: the edge under gunicorn, Celery workers, beat."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from worker.queueing.routes import WEBHOOK_QUEUE
from worker.settings import Settings

EDGE_APP = "api.app:create_app()"
EDGE_CONFIG = "python:api.gunicorn_conf"


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[None]:
    """A folder through which forked processes share their metrics; prometheus_client
    reads its variable when it is first imported, so this comes first."""
    metrics_dir = tempfile.mkdtemp(prefix="assistant-ingest-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        yield
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def run_api(args: argparse.Namespace) -> int:
    """gunicorn with the edge's configuration file; the options given here override it,
    and GUNICORN_CMD_ARGS overrides the file where no option is given.

    gunicorn runs in a new interpreter, exactly as `gunicorn -c ...` would: this
    process has already imported `ssl` (through the store's and HTTP clients'
    modules), and gevent must patch `ssl` before anything imports it, or TLS
    to the store or the broker would block the edge's event loop."""
    argv = [sys.executable, "-m", "gunicorn", "-c", EDGE_CONFIG]
    if args.host is not None or args.port is not None:
        argv += ["--bind", f"{args.host or '0.0.0.0'}:{args.port or 8000}"]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    os.execv(sys.executable, [*argv, EDGE_APP])


def run_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if WEBHOOK_QUEUE in queues and len(queues) > 1 and settings.worker_webhooks_apart:
        return _run_apart(args, settings, queues)
    if not settings.metrics_port or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Without a port, metrics are served only if a folder is given: shared
        # with the edge (as `dev` does), whose /metrics then shows them.
        return _run_worker(args, settings)
    with multiprocess_metrics():
        return _run_worker(args, settings)


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from celery.signals import setup_logging, worker_ready

    from worker.celery_app import app
    from worker.queueing.routes import SINGLE_QUEUE, WEBHOOK_QUEUE
    from worker.store.connection import Store
    from worker.store.indexes import ensure_indexes
    from worker.telemetry import exposition, logs

    def configure_logs(**_: Any) -> None:
        logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)

    configure_logs()
    # Celery leaves logging (and stdout) alone when someone answers this signal.
    setup_logging.connect(configure_logs, weak=False)
    if settings.metrics_port:
        # Served from the main process once the pool is up, so no pool
        # process inherits the listening socket.
        worker_ready.connect(lambda **_: exposition.serve(settings.metrics_port), weak=False)
    store = Store.connect(settings, timeout_ms=30_000)
    ensure_indexes(store)
    store.close()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    pool, concurrency = args.pool or "prefork", args.concurrency or settings.worker_concurrency
    if queues == [WEBHOOK_QUEUE] and args.pool is None:
        # An attempt waits on the network for up to its deadline: threads, and many.
        pool = "threads"
        concurrency = args.concurrency or settings.webhook_worker_concurrency
    # A message of single creates is small and quick: a few reserved per
    # process keep the pool busy between round trips to the broker. Chunks are
    # big, so a bulk-only worker takes one at a time per process.
    prefetch = 4 if SINGLE_QUEUE in queues else 1
    app.conf.worker_prefetch_multiplier = prefetch
    argv = [
        "--quiet",  # no banner on stdout: every line is JSON; the start is logged below
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    if args.beat:
        argv += [
            "--beat",
            "--schedule",
            str(Path(tempfile.gettempdir()) / f"ai-beat-{os.getpid()}"),
        ]
    logging.getLogger("worker").info(
        "worker starting",
        extra={
            "queues": queues,
            "concurrency": concurrency,
            "pool": pool,
            "prefetch_multiplier": prefetch,
            "beat": bool(args.beat),
            "metrics_port": settings.metrics_port or None,
        },
    )
    app.worker_main(argv)
    return 0


def _run_apart(args: argparse.Namespace, settings: Settings, queues: list[str]) -> int:
    """Deliveries in a worker of their own beside the worker of the other queues.

    A delivery waits on its receiver for up to its deadline: in the pool that
    serves creates, a few hanging receivers would hold every process and
    creates would wait for pickup. So a worker given the webhooks queue with
    others runs two Celery workers, as the compose file does, and supervises
    them: signals are passed on to both, and when one ends the other is
    stopped, so the process manager sees one worker stop and restarts it."""
    from worker.telemetry import logs

    logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)
    others = [q for q in queues if q != WEBHOOK_QUEUE]
    command = [sys.executable, "-m", "cli.main", "worker"]
    main = [*command, "--queues", ",".join(others)]
    if args.concurrency:
        main += ["--concurrency", str(args.concurrency)]
    if args.pool:
        main += ["--pool", args.pool]
    if args.hostname:
        main += ["--hostname", args.hostname]
    if args.beat:
        main.append("--beat")
    hostname = f"webhooks-{args.hostname}" if args.hostname else "webhooks@%h"
    hooks = [*command, "--queues", WEBHOOK_QUEUE, "--hostname", hostname]
    logging.getLogger("worker").info(
        "worker starting",
        extra={
            "queues": queues,
            "beat": bool(args.beat),
            "webhooks_apart": True,
            "workers": {"main": others, "webhooks": [WEBHOOK_QUEUE]},
        },
    )
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if settings.metrics_port and not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # One folder for both, so the metrics port (the main worker's) shows
            # the deliveries' series too.
            stack.enter_context(multiprocess_metrics())
            env = dict(os.environ)
        children = [
            subprocess.Popen(main, env=env, preexec_fn=_die_with_parent),
            # Its metrics go to the shared folder; only one process can listen.
            subprocess.Popen(hooks, env={**env, "METRICS_PORT": "0"}, preexec_fn=_die_with_parent),
        ]
        return _supervise(children)


def _die_with_parent() -> None:
    """In the child: end when the supervisor does, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait on the children, passing signals on; when one ends, stop the others."""
    stopping = False

    def pass_on(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, pass_on)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:
        ended = next(child for child in children if child.poll() is not None)
        logging.getLogger("worker").error(
            "worker process ended (exit %s); stopping the other", ended.returncode
        )
        pass_on(signal.SIGTERM, None)
    for child in children:
        child.wait()
    return next((c.returncode for c in children if c.returncode), 0)


def run_beat(args: argparse.Namespace) -> int:
    from celery.signals import setup_logging

    from worker.celery_app import app
    from worker.telemetry import logs

    settings = Settings()

    def configure_logs(**_: Any) -> None:
        logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)

    configure_logs()
    setup_logging.connect(configure_logs, weak=False)
    schedule = ["--schedule", args.schedule] if args.schedule else []
    app.start(["beat", *schedule, "--loglevel", settings.log_level])
    return 0
