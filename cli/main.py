"""The `assistant-ingest` command: run the stack, the edge, workers; manage keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from cli import bulk, dev, keys, migrate, plans, provision, serve

    parser = argparse.ArgumentParser(prog="assistant-ingest")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("dev", help="run everything locally with embedded Redis and MongoDB")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--data-dir", type=Path, default=Path(".data"))
    run.add_argument("--tenant", default="dev")

    api = sub.add_parser(
        "api", help="run the HTTP edge under gunicorn (GUNICORN_CMD_ARGS is honoured)"
    )
    api.add_argument("--host", default=None, help="default 0.0.0.0")
    api.add_argument("--port", type=int, default=None, help="default 8000")
    api.add_argument("--workers", type=int, default=None, help="default 2")

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--queues",
        default="single,bulk,webhooks,maintenance",
        help="comma-separated; mixed with others, webhooks run in a threads worker of "
        "their own that this one starts (WORKER_WEBHOOKS_APART=false: in one pool)",
    )
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconciler")
    worker.add_argument(
        "--pool", default=None, help="default prefork; threads for a worker of webhooks only"
    )
    worker.add_argument("--hostname", default=None)

    beat = sub.add_parser("beat", help="run the periodic scheduler (reconciler, webhook sweep)")
    beat.add_argument(
        "--schedule", default=None, help="beat's state file (default: in the temporary folder)"
    )

    keys_parser = sub.add_parser("keys", help="manage API keys")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="use the store of the `dev` stack running on this folder (else MONGODB_URI)",
    )
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", parents=[store], help="create a key; prints one line of JSON"
    )
    create.add_argument("--tenant", required=True)
    create.add_argument("--webhook-url", default=None)
    revoke = keys_sub.add_parser("revoke", parents=[store], help="revoke a key")
    revoke.add_argument("api_key")

    bulk.add_parser(sub)
    provision.add_parsers(sub)
    plans.add_parser(sub)
    migrate.add_parser(sub)

    args = parser.parse_args(argv)
    command: Any = {
        "dev": dev.run_dev,
        "api": serve.run_api,
        "worker": serve.run_worker,
        "beat": serve.run_beat,
        "keys": keys.run_keys,
        "bulk": bulk.run,
        "apply": provision.run,
        "export": provision.run,
        "plan": plans.run,
        "migrate": migrate.run,
    }[args.command]
    result: int = command(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
