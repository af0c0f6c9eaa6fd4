"""`assistant-ingest keys`: make and revoke API keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

# Imported where they are used: `assistant-ingest` builds every command's parser
# before it runs one, and the edge's (`api`) has no use for the store's driver.
if TYPE_CHECKING:
    from pymongo.errors import PyMongoError

    from worker.settings import Settings


def run_keys(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from worker.settings import Settings

    if args.data_dir is not None:
        problem = use_dev_stack(args.data_dir)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    settings = Settings()
    try:
        return _run(args, settings)
    except PyMongoError as exc:
        print(
            f"error: cannot reach the store at {where(settings.mongodb_uri)}: {reason(exc)}",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.services import urlguard
    from worker.store import tenants
    from worker.store.connection import Store
    from worker.store.indexes import ensure_indexes

    store = Store.connect(settings)
    ensure_indexes(store)
    if args.keys_command == "create":
        if args.webhook_url is not None:
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


def use_dev_stack(data_dir: Path) -> str | None:
    """Point this process at the servers of the `dev` stack running on `data_dir`;
    returns what is wrong instead, if anything."""
    from cli.dev import ENV_FILE, PID_VARIABLE, pid_alive, read_env_file

    found = read_env_file(data_dir.resolve())
    if not found:
        return f"no dev stack runs on {data_dir}: {ENV_FILE} is not there (start bin/dev)"
    if not pid_alive(int(found.get(PID_VARIABLE, "0") or 0)):
        return f"the dev stack that wrote {data_dir}/{ENV_FILE} is not running"
    # The stack's settings, so this command judges as the stack does (a loopback
    # --webhook-url is as acceptable here as at the stack's PUT /v1/webhook_endpoint).
    for name, value in found.items():
        if name != PID_VARIABLE:
            os.environ[name] = value
    return None


def where(uri: str) -> str:
    """The store's address without any credentials in its URI."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def reason(exc: PyMongoError) -> str:
    """pymongo's message up to where it starts describing its whole topology."""
    text = str(exc).split(", Timeout:", 1)[0].split("\n", 1)[0]
    return text[:300] or type(exc).__name__
