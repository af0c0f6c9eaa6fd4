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
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from worker.queueing.routes import WEBHOOK_QUEUE

# Imported where they are used: `api` only execs gunicorn, which reads them itself.
if TYPE_CHECKING:
    from worker.settings import Settings
    from worker.store.connection import Store

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
    from worker.settings import Settings

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


def _run_worker(
    args: argparse.Namespace, settings: Settings, on_ready: Callable[[], None] | None = None
) -> int:
    """A Celery worker in this process; `on_ready` runs once it serves (after its
    metrics port is bound)."""
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
    if on_ready is not None:
        worker_ready.connect(lambda **_: on_ready(), weak=False)
    _ensure_indexes_when_up(Store.connect(settings, timeout_ms=30_000), ensure_indexes)
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
        # Beat's schedule in memory: its entries are short fixed intervals, so
        # a record of when each last ran is worth nothing across a restart, and
        # a file per worker would be left behind by every start (or shared by
        # two workers' beats, which its format does not allow).
        argv += ["--beat", "--scheduler", "celery.beat:Scheduler"]
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
    others runs the webhooks queue in a second Celery worker (a threads pool),
    a child of this process, and the other queues here, as asked. The two stop
    together: when this worker shuts down it stops the child (which also ends
    with this process, even killed); when the child ends on its own, this
    worker shuts down, so the process manager sees one worker stop and
    restarts it whole."""
    from celery.signals import worker_shutdown

    from worker.telemetry import logs

    logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)
    others = [q for q in queues if q != WEBHOOK_QUEUE]
    hostname = f"webhooks-{args.hostname}" if args.hostname else "webhooks@%h"
    command = [sys.executable, "-m", "cli.main", "worker", "--queues", WEBHOOK_QUEUE]
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
        if settings.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # One folder for both, so this worker's metrics port shows the
            # deliveries' series too.
            stack.enter_context(multiprocess_metrics())
        children: list[subprocess.Popen[bytes]] = []
        stopping = threading.Event()

        def start_child() -> None:
            # Once this worker serves: its metrics port is bound before the
            # child opens its many connections (whose ports the system picks).
            if stopping.is_set() or children:
                return
            # Only one process can listen on the metrics port: this one.
            env = {**os.environ, "METRICS_PORT": "0"}
            # Tied to the thread that starts it: only the main thread lives as long
            # as this process.
            main_thread = threading.current_thread() is threading.main_thread()
            child = subprocess.Popen(
                [*command, "--hostname", hostname],
                env=env,
                preexec_fn=_die_with_parent if main_thread else None,
            )
            children.append(child)
            threading.Thread(target=watch, args=(child,), name="webhooks", daemon=True).start()

        def watch(child: subprocess.Popen[bytes]) -> None:
            code = child.wait()
            if stopping.is_set():
                return
            # Stopped with this one (a signal to the process group), or ended.
            stopped = code in (0, -signal.SIGTERM, -signal.SIGINT)
            logging.getLogger("worker").log(
                logging.WARNING if stopped else logging.ERROR,
                "webhooks worker ended (exit %s); stopping this worker too",
                code,
            )
            os.kill(os.getpid(), signal.SIGTERM)

        def stop_children(**_: Any) -> None:
            stopping.set()
            for child in children:
                if child.poll() is None:
                    child.terminate()
                try:
                    child.wait(settings.webhook_timeout_seconds + 30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

        worker_shutdown.connect(stop_children, weak=False)
        main = argparse.Namespace(**{**vars(args), "queues": ",".join(others)})
        try:
            return _run_worker(main, settings, on_ready=start_child)
        finally:
            stop_children()


def _ensure_indexes_when_up(store: Store, ensure: Callable[[Store], None]) -> None:
    """Declare the indexes, waiting for the store if it is down: a worker started
    during an outage (or the webhooks worker a worker starts) waits for it, as a
    running worker waits out one, instead of exiting and taking its parent down."""
    from pymongo.errors import PyMongoError

    try:
        while True:
            try:
                ensure(store)
                return
            except PyMongoError as exc:
                logging.getLogger("worker").warning(
                    "the store is not answering (%s); declaring the indexes again shortly", exc
                )
                time.sleep(2)
    finally:
        store.close()


def _die_with_parent() -> None:
    """In the child: end when the thread that started it does (this process's main
    thread), even if this process is killed (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_beat(args: argparse.Namespace) -> int:
    from celery.signals import setup_logging

    from worker.celery_app import app
    from worker.settings import Settings
    from worker.telemetry import logs

    settings = Settings()

    def configure_logs(**_: Any) -> None:
        logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)

    configure_logs()
    setup_logging.connect(configure_logs, weak=False)
    schedule = ["--schedule", args.schedule] if args.schedule else []
    app.start(["beat", *schedule, "--loglevel", settings.log_level])
    return 0
