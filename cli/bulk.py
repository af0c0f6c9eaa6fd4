"""`assistant-ingest bulk`: a client for batches, for provisioning scripts.

    assistant-ingest bulk submit requests.jsonl --wait
    assistant-ingest bulk results batch_... > results.jsonl
    assistant-ingest bulk status|wait|cancel|retry batch_...

Ctrl-C on a command that waits leaves the batch running, and says how to
follow it again (`bulk wait`).

The API address and key come from --url/--api-key or ASSISTANT_INGEST_URL and
ASSISTANT_INGEST_API_KEY. Progress goes to stderr; data to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

FINAL = ("completed", "cancelled")


def add_parser(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="submit batches and fetch their results")
    add_api_options(bulk)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="report an error as one line of JSON on stderr (for scripts)",
    )
    commands = bulk.add_subparsers(dest="bulk_command", required=True)
    submit = commands.add_parser(
        "submit", parents=[common], help="upload a JSONL file of requests as one batch"
    )
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="show progress until it finishes")
    submit.add_argument("--idempotency-key", default=None)
    submit.add_argument("--callback-url", default=None)
    results = commands.add_parser(
        "results", parents=[common], help="write a batch's results as NDJSON"
    )
    results.add_argument("batch_id")
    results.add_argument("--status", choices=("succeeded", "failed", "cancelled"), default=None)
    results.add_argument("--output", "-o", type=Path, default=None)
    for name, text in (
        ("status", "print a batch"),
        ("wait", "show a batch's progress until it finishes"),
        ("cancel", "cancel a batch's requests not yet started"),
        ("retry", "submit a batch's failed and cancelled lines again, as a new batch"),
    ):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("batch_id")
    retry_parser = commands.choices["retry"]
    retry_parser.add_argument("--only", choices=("failed", "cancelled"), default=None)
    retry_parser.add_argument("--wait", action="store_true", help="show progress until it finishes")


def add_api_options(parser: Any) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("ASSISTANT_INGEST_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--api-key", default=os.environ.get("ASSISTANT_INGEST_API_KEY"))


def api_base(url: str) -> str:
    """The service's address, given with or without the `/v1` that the OpenAI SDK's
    base URL needs (the paths this CLI asks for carry it)."""
    base = url.rstrip("/")
    return base.removesuffix("/v1")


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


# Exit codes: 0 done, 1 the API refused the request, 2 it could not be made (a
# usage error, a file that cannot be read, a server that cannot be reached),
# 3 a batch finished with failed requests.
REFUSED, UNUSABLE = 1, 2


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        return fail(args, UNUSABLE, "give --api-key or set ASSISTANT_INGEST_API_KEY")
    client = Client(api_base(args.url), args.api_key)
    commands: dict[str, Callable[[Client, argparse.Namespace], int]] = {
        "submit": submit,
        "results": results,
        "status": status,
        "wait": wait,
        "cancel": cancel,
        "retry": retry,
    }
    return guarded(args, client, commands[args.bulk_command])


def guarded(
    args: argparse.Namespace, client: Client, command: Callable[[Client, argparse.Namespace], int]
) -> int:
    """Run a command against the API; every failure is one line and an exit code."""
    try:
        return command(client, args)
    except ApiFailure as exc:
        return refused(args, exc)
    except Unreachable as exc:
        return fail(args, UNUSABLE, f"cannot reach {client.url}: {exc.reason}")
    except http.client.HTTPException as exc:
        return fail(args, UNUSABLE, f"the connection to {client.url} broke: {exc!r}")
    except OSError as exc:
        name = exc.filename if exc.filename is not None else ""
        return fail(args, UNUSABLE, f"{name}: {exc.strerror or exc}" if name else str(exc))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def fail(args: argparse.Namespace, code: int, message: str, **extra: Any) -> int:
    """One line on stderr: readable, or one JSON object with --json."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, **extra}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return code


def refused(args: argparse.Namespace, exc: ApiFailure) -> int:
    """The API's answer to a refused request; a 422's entries one per line, by input line."""
    try:
        detail = json.loads(exc.body)["detail"]
    except (ValueError, KeyError, TypeError):
        detail = exc.body.strip()
    if not isinstance(detail, list):
        return fail(args, REFUSED, f"HTTP {exc.status}: {detail}", status=exc.status)
    custom_ids = _custom_ids(getattr(args, "file", None), _lines_named(detail))
    entries = [_entry(item, custom_ids) for item in detail if isinstance(item, dict)]
    uploading = getattr(args, "bulk_command", "submit") == "submit"
    what = "the batch was refused, nothing was created" if uploading else "the request was refused"
    if args.json:
        return fail(
            args,
            REFUSED,
            f"HTTP {exc.status}: {what}",
            status=exc.status,
            errors=entries,
            detail=detail,
        )
    print(f"error: HTTP {exc.status}: {what}:", file=sys.stderr)
    for entry in entries:
        where = f"line {entry['line']}" if entry["line"] is not None else entry["where"]
        if entry.get("custom_id") is not None:
            where += f" (custom_id {json.dumps(entry['custom_id'], ensure_ascii=False)})"
        field = f"{entry['field']}: " if entry["field"] else ""
        print(f"  {where}: {field}{entry['message']}", file=sys.stderr)
    return REFUSED


def _lines_named(detail: list[Any]) -> set[int]:
    return {
        item["loc"][1]
        for item in detail
        if isinstance(item, dict) and _is_line_loc(item.get("loc"))
    }


def _is_line_loc(loc: Any) -> bool:
    return (
        isinstance(loc, list)
        and len(loc) >= 2
        and loc[0] == "body"
        and isinstance(loc[1], int)
        and not isinstance(loc[1], bool)
    )


def _entry(item: dict[str, Any], custom_ids: dict[int, str]) -> dict[str, Any]:
    """A 422 entry as a person reads it: the line numbered from 1, its custom_id."""
    loc = item.get("loc") or []
    message = str(item.get("msg", ""))
    error = (item.get("ctx") or {}).get("error") if isinstance(item.get("ctx"), dict) else None
    if error:
        message += f" ({error})"
    if _is_line_loc(loc):
        rest = loc[2:]
        if item.get("type") == "json_invalid" and rest and isinstance(rest[0], int):
            message += f" at character {rest[0] + 1}"
            rest = []
        return {
            "line": loc[1] + 1,
            "custom_id": custom_ids.get(loc[1]),
            "field": ".".join(str(part) for part in rest),
            "message": message,
            "type": item.get("type"),
        }
    return {
        "line": None,
        "where": " ".join(str(part) for part in loc) or "request",
        "field": "",
        "message": message,
        "type": item.get("type"),
    }


def _custom_ids(path: Path | None, lines: set[int]) -> dict[int, str]:
    """The custom_id given on each of these lines of the uploaded file, where one is."""
    found: dict[int, str] = {}
    if path is None or not lines:
        return found
    try:
        with path.open("rb") as upload:
            for number, raw in enumerate(upload):
                if number > max(lines):
                    break
                if number not in lines:
                    continue
                if number == 0:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                try:
                    value = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(value, dict) and isinstance(value.get("custom_id"), str):
                    found[number] = value["custom_id"]
    except OSError:
        pass
    return found


class ApiFailure(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Unreachable(Exception):
    """No answer from the API: refused, reset, timed out, not resolved."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        except urllib.error.URLError as exc:
            raise Unreachable(str(getattr(exc.reason, "strerror", None) or exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None

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
    """Poll the batch, drawing a progress line: counts, rate and time left. On
    Ctrl-C, say that the batch goes on and how to follow it again."""
    try:
        return _follow(client, batch)
    except KeyboardInterrupt:
        print(
            f"\nbatch {batch['id']} goes on; follow it again with: "
            f"assistant-ingest bulk wait {batch['id']}",
            file=sys.stderr,
        )
        raise


def _follow(client: Client, batch: dict[str, Any]) -> dict[str, Any]:
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


def finished(batch: dict[str, Any]) -> int:
    """Print the batch; 3 when requests failed, as `submit --wait`."""
    print(json.dumps(batch))
    return 0 if batch["request_counts"]["failed"] == 0 else 3


def status(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(client.json("GET", f"/v1/batches/{args.batch_id}")))
    return 0


def wait(client: Client, args: argparse.Namespace) -> int:
    return finished(follow(client, client.json("GET", f"/v1/batches/{args.batch_id}")))


def cancel(client: Client, args: argparse.Namespace) -> int:
    print(json.dumps(client.json("POST", f"/v1/batches/{args.batch_id}/cancel")))
    return 0


def retry(client: Client, args: argparse.Namespace) -> int:
    query = f"?only={args.only}" if args.only else ""
    batch = client.json("POST", f"/v1/batches/{args.batch_id}/retry{query}")
    total = batch["request_counts"]["total"]
    print(
        f"batch {batch['id']}: {plural(total, 'request')}, a retry of {args.batch_id}",
        file=sys.stderr,
    )
    if args.wait:
        return finished(follow(client, batch))
    print(json.dumps(batch))
    return 0


def progress_bar(done: int, total: int) -> str:
    width = max(10, min(40, shutil.get_terminal_size().columns - 60))
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def results(client: Client, args: argparse.Namespace) -> int:
    query = f"?status={args.status}" if args.status else ""
    return download(client, f"/v1/batches/{args.batch_id}/results{query}", args.output)


def download(client: Client, path: str, output: Path | None) -> int:
    """Stream a GET's body to `output`, or to stdout."""
    out = output.open("wb") if output else sys.stdout.buffer
    try:
        with client.open("GET", path) as response:
            shutil.copyfileobj(response, out)
    finally:
        if output:
            out.close()
        else:
            out.flush()
    return 0
