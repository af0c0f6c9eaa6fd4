"""The `assistant-ingest` command: run the stack, the edge, workers; manage keys."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assistant-ingest")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything locally with embedded Redis and MongoDB")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", type=Path, default=Path(".data"))
    dev.add_argument("--tenant", default="dev")

    api = sub.add_parser("api", help="run the HTTP edge under gunicorn")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--threads", type=int, default=32)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default="single,bulk,webhooks,maintenance")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconciler")
    worker.add_argument("--pool", default="prefork")
    worker.add_argument("--hostname", default=None)

    beat = sub.add_parser("beat", help="run the periodic scheduler (reconciler, webhook sweep)")
    beat.add_argument("--schedule", default="celerybeat-schedule")

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; prints one line of JSON")
    create.add_argument("--tenant", required=True)
    create.add_argument("--webhook-url", default=None)
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("api_key")

    from api import bulk_cli

    bulk_cli.add_parser(sub)

    args = parser.parse_args(argv)
    command: Any = {
        "dev": run_dev,
        "api": run_api,
        "worker": run_worker,
        "beat": run_beat,
        "keys": run_keys,
        "bulk": bulk_cli.run,
    }[args.command]
    result: int = command(args)
    return result


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
    settings = Settings()
    with multiprocess_metrics():
        return _serve_api(args, settings)


def _serve_api(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    from api import logging_setup
    from api.app import create_app
    from worker import logs
    from worker.store import Store

    logs.configure(settings.log_level)
    store = Store.connect(settings, timeout_ms=30_000)
    store.ensure_indexes()
    store.close()

    def child_exit(_server: Any, worker: Any) -> None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    class Edge(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            # Threads hold `Prefer: wait` requests and result streams cheaply.
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            # Above the longest wait (60 s) and a long results stream.
            self.cfg.set("timeout", 300)
            self.cfg.set("graceful_timeout", 30)
            # The app writes its own access line (with the request id, as JSON).
            self.cfg.set("accesslog", None)
            self.cfg.set("logconfig_dict", logging_setup.gunicorn_config(settings.log_level))
            self.cfg.set("child_exit", child_exit)
            if "control_socket_disable" in self.cfg.settings:
                # One control socket per user would be shared by every edge on the host.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return create_app(settings)

    Edge().run()
    return 0


def run_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    if not settings.metrics_port:
        return _run_worker(args, settings)
    with multiprocess_metrics():
        return _run_worker(args, settings)


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from celery.signals import setup_logging, worker_ready

    from worker import logs, metrics
    from worker.celery_app import SINGLE_QUEUE, app, configure
    from worker.store import Store

    def configure_logs(**_: Any) -> None:
        logs.configure(settings.log_level, quiet=logs.CELERY_CHATTER)

    configure_logs()
    # Celery leaves logging (and stdout) alone when someone answers this signal.
    setup_logging.connect(configure_logs, weak=False)
    if settings.metrics_port:
        # Served from the main process once the pool is up, so no pool
        # process inherits the listening socket.
        worker_ready.connect(lambda **_: metrics.serve(settings.metrics_port), weak=False)
    configure(settings)
    store = Store.connect(settings, timeout_ms=30_000)
    store.ensure_indexes()
    store.close()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    concurrency = args.concurrency or settings.worker_concurrency
    # celery-batches buffers single creates unacknowledged until it flushes,
    # so that queue needs a prefetch of at least the flush size; chunks are
    # big, so a bulk-only worker takes one at a time per process.
    prefetch = 1
    if SINGLE_QUEUE in queues:
        prefetch = max(1, math.ceil(2 * settings.single_flush_every / concurrency))
    app.conf.worker_prefetch_multiplier = prefetch
    argv = [
        "--quiet",  # no banner on stdout: every line is JSON; the start is logged below
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--pool",
        args.pool,
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
            "pool": args.pool,
            "prefetch_multiplier": prefetch,
            "beat": bool(args.beat),
            "metrics_port": settings.metrics_port or None,
        },
    )
    app.worker_main(argv)
    return 0


def run_beat(args: argparse.Namespace) -> int:
    from worker.celery_app import app, configure

    settings = Settings()
    configure(settings)
    app.start(["beat", "--schedule", args.schedule, "--loglevel", settings.log_level])
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from worker import tenants
    from worker.store import Store

    settings = Settings()
    store = Store.connect(settings, timeout_ms=10_000)
    store.ensure_indexes()
    if args.keys_command == "create":
        if args.webhook_url is not None:
            from worker import urlguard

            try:
                urlguard.check_submitted(args.webhook_url, settings.webhook_allow_private)
            except urlguard.UrlRefused as exc:
                print(f"error: --webhook-url: {exc}", file=sys.stderr)
                return 2
        created = tenants.create_key(store, args.tenant, args.webhook_url)
        print(
            json.dumps(
                {
                    "tenant": created.tenant,
                    "api_key": created.api_key,
                    "webhook_secret": created.webhook_secret,
                }
            )
        )
        return 0
    if not tenants.revoke_key(store, args.api_key):
        print("error: no such live key", file=sys.stderr)
        return 1
    print(json.dumps({"revoked": True}))
    return 0


# The local layout: single creates (and webhooks, and the reconciler) apart
# from batch chunks, so a large batch never delays a `Prefer: wait` request.
DEV_WORKERS = {
    "worker-single": (
        "worker",
        "--queues",
        "single,webhooks,maintenance",
        "--beat",
        "--hostname",
        "single@%h",
    ),
    "worker-bulk": ("worker", "--queues", "bulk", "--hostname", "bulk@%h"),
}


def run_dev(args: argparse.Namespace) -> int:
    """Valkey, SecantusDB, the edge and workers as child processes; Ctrl-C stops all."""
    from api.embedded import start_mongo, start_valkey, wait_for_port

    data = args.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    valkey = start_valkey(data / "valkey")
    mongo = start_mongo(data / "mongo")
    env = {
        **os.environ,
        "MONGODB_URI": f"mongodb://127.0.0.1:{mongo.port}/assistant_ingest",
        "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0",
        "WEBHOOK_ALLOW_PRIVATE": os.environ.get("WEBHOOK_ALLOW_PRIVATE", "true"),
    }
    me = [sys.executable, "-m", "api.cli"]
    children: list[subprocess.Popen[bytes]] = []
    logs = data / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, *extra: str) -> subprocess.Popen[bytes]:
        out = (logs / f"{name}.log").open("ab")
        child = subprocess.Popen([*me, *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
        children.append(child)
        return child

    try:
        key = subprocess.run(
            [*me, "keys", "create", "--tenant", args.tenant],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        edge = spawn("api", "api", "--host", "127.0.0.1", "--port", str(args.port))
        for name, worker_args in DEV_WORKERS.items():
            spawn(name, *worker_args)
        wait_for_port(args.port, edge, timeout=60)
        info = json.loads(key)
        print(f"assistant-ingest is running on http://127.0.0.1:{args.port}")
        print(f"  tenant:         {info['tenant']}")
        print(f"  API key:        {info['api_key']}")
        print(f"  webhook secret: {info['webhook_secret']}")
        print(f"  data and logs:  {data}")
        print("Press Ctrl-C to stop.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        mongo.stop()
        valkey.stop()


if __name__ == "__main__":
    sys.exit(main())
