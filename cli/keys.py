"""`assistant-ingest keys`: make and revoke API keys."""

from __future__ import annotations

import argparse
import json
import sys

from worker.settings import Settings


def run_keys(args: argparse.Namespace) -> int:
    from worker.services import urlguard
    from worker.store import tenants
    from worker.store.connection import Store
    from worker.store.indexes import ensure_indexes

    settings = Settings()
    store = Store.connect(settings, timeout_ms=10_000)
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
