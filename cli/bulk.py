"""`assistant-ingest bulk`: a client for batches, for provisioning scripts.

    assistant-ingest bulk submit requests.jsonl --wait
    assistant-ingest bulk results batch_... > results.jsonl

The API address and key come from --url/--api-key or ASSISTANT_INGEST_URL and
ASSISTANT_INGEST_API_KEY. Progress goes to stderr; data to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

FINAL = ("completed", "cancelled")


def add_parser(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="submit batches and fetch their results")
    bulk.add_argument(
        "--url", default=os.environ.get("ASSISTANT_INGEST_URL", "http://127.0.0.1:8000")
    )
    bulk.add_argument("--api-key", default=os.environ.get("ASSISTANT_INGEST_API_KEY"))
    commands = bulk.add_subparsers(dest="bulk_command", required=True)
    submit = commands.add_parser("submit", help="upload a JSONL file of requests as one batch")
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="show progress until it finishes")
    submit.add_argument("--idempotency-key", default=None)
    submit.add_argument("--callback-url", default=None)
    results = commands.add_parser("results", help="write a batch's results as NDJSON")
    results.add_argument("batch_id")
    results.add_argument("--status", choices=("succeeded", "failed", "cancelled"), default=None)
    results.add_argument("--output", "-o", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("error: give --api-key or set ASSISTANT_INGEST_API_KEY", file=sys.stderr)
        return 2
    client = Client(args.url.rstrip("/"), args.api_key)
    try:
        if args.bulk_command == "submit":
            return submit(client, args)
        return results(client, args)
    except ApiFailure as exc:
        print(f"error: HTTP {exc.status}: {exc.body}", file=sys.stderr)
        return 1


class ApiFailure(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key

    def open(
        self,
        method: str,
        path: str,
        data: IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_key}", **(headers or {})},
        )
        try:
            return urllib.request.urlopen(request, timeout=600)
        except urllib.error.HTTPError as exc:
            raise ApiFailure(exc.code, exc.read().decode(errors="replace")) from None

    def json(self, method: str, path: str) -> Any:
        with self.open(method, path) as response:
            return json.load(response)


def submit(client: Client, args: argparse.Namespace) -> int:
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Length": str(args.file.stat().st_size),
    }
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    if args.callback_url:
        headers["Callback-URL"] = args.callback_url
    with args.file.open("rb") as upload, client.open("POST", "/v1/batches", upload, headers) as r:
        batch = json.load(r)
    print(f"batch {batch['id']}: {batch['request_counts']['total']:,} requests", file=sys.stderr)
    if args.wait:
        batch = follow(client, batch)
    print(json.dumps(batch))
    return 0 if batch["request_counts"]["failed"] == 0 else 3


def follow(client: Client, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll the batch, drawing a progress line: counts, rate and time left."""
    started = time.monotonic()
    while True:
        counts = batch["request_counts"]
        done = counts["completed"] + counts["failed"] + counts["cancelled"]
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done / elapsed
        left = (counts["total"] - done) / rate if rate > 0 else float("inf")
        eta = f"{left:,.0f} s" if left != float("inf") else "?"
        print(
            f"\r{progress_bar(done, counts['total'])} {done:,}/{counts['total']:,} "
            f"ok {counts['completed']:,} failed {counts['failed']:,} "
            f"{rate:,.0f}/s eta {eta}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if batch["status"] in FINAL:
            print(file=sys.stderr)
            return batch
        time.sleep(1)
        batch = client.json("GET", f"/v1/batches/{batch['id']}")


def progress_bar(done: int, total: int) -> str:
    width = max(10, min(40, shutil.get_terminal_size().columns - 60))
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def results(client: Client, args: argparse.Namespace) -> int:
    query = f"?status={args.status}" if args.status else ""
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    try:
        with client.open("GET", f"/v1/batches/{args.batch_id}/results{query}") as response:
            shutil.copyfileobj(response, out)
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
    return 0
