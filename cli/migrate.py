"""`assistant-ingest migrate`: rewrite assistants stored with `tools_json` /
`metadata_json` text into the origin's shape (native `tools` and `metadata`).

Idempotent and resumable: each document is rewritten on its own, only if it
is still as it was read, so running it again (after an interruption, or
beside live workers) rewrites only what is left. Reads take both shapes,
so the service runs before, during and after it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "migrate", help="store assistants saved as JSON text in the origin's shape"
    )
    parser.add_argument("--batch-size", type=int, default=500)


def run(args: argparse.Namespace) -> int:
    from worker.domain.assistants import migrated
    from worker.settings import Settings
    from worker.store import assistants
    from worker.store.connection import Store

    store = Store.connect(Settings(), timeout_ms=10_000)
    rewritten = 0
    try:
        while True:
            docs = assistants.legacy_shaped(store, args.batch_size)
            done = assistants.rewrite(store, [(doc, migrated(doc)) for doc in docs])
            rewritten += done
            if not done:  # nothing left, or only documents changing under us: run again
                break
    finally:
        store.close()
    print(json.dumps({"rewritten": rewritten}))
    return 0
