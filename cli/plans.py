"""`assistant-ingest plan`: what applying a manifest would change, as a diff.

    assistant-ingest plan assistants.jsonl            # readable diff; exit 0, 2 or 1
    assistant-ingest plan assistants.jsonl --json     # the plan's NDJSON lines
    assistant-ingest plan assistants.jsonl --prune    # with the deletions of --prune

Exit codes, as `terraform plan -detailed-exitcode`: 0 when nothing would
change, 2 when something would, 1 on any error (an invalid line included: its
apply would fail). The diff goes to stdout, a line per create (`+`), update
(`~`, then one line per field change), delete (`-`) and invalid line (`!`),
then the count of unchanged lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from cli import bulk

NO_CHANGES, CHANGES, ERROR = 0, 2, 1
MARKS = {"create": "+", "update": "~", "delete": "-", "invalid": "!"}


def add_parser(sub: Any) -> None:
    plan = sub.add_parser(
        "plan", help="show what applying a manifest would change; exit 0 none, 2 some, 1 error"
    )
    bulk.add_api_options(plan)
    plan.add_argument("file", type=Path)
    plan.add_argument(
        "--prune", action="store_true", help="also show the keyed assistants --prune would delete"
    )
    plan.add_argument("--json", action="store_true", help="print the plan's NDJSON lines")


class Plan(NamedTuple):
    lines: list[dict[str, Any]]
    etag: str | None  # the plan's digest, for If-Match

    def counts(self) -> Counter[str]:
        return Counter(line["action"] for line in self.lines)

    def changes_anything(self) -> bool:
        counts = self.counts()
        return any(counts[action] for action in ("create", "update", "delete"))


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        return bulk.fail(args, ERROR, "give --api-key or set ASSISTANT_INGEST_API_KEY")
    client = bulk.Client(bulk.api_base(args.url), args.api_key)
    outcome = {"code": ERROR}

    def command(client: bulk.Client, args: argparse.Namespace) -> int:
        outcome["code"] = show(fetch(client, args.file, prune=args.prune), args.json)
        return 0

    # `guarded` reports a failure as one line, with the exit codes of `bulk`;
    # a plan's are 1 for every failure (2 means "something would change").
    failed = bulk.guarded(args, client, command)
    if failed == 130:
        return failed
    return ERROR if failed else outcome["code"]


def fetch(client: bulk.Client, path: Path, *, prune: bool) -> Plan:
    """The plan of applying the manifest at `path` (a dry run, changing nothing)."""
    query = "mode=apply&dry_run=true" + ("&prune=true" if prune else "")
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Length": str(path.stat().st_size),
    }
    with (
        path.open("rb") as upload,
        client.open("POST", f"/v1/batches?{query}", upload, headers) as response,
    ):
        lines = [json.loads(raw) for raw in response if raw.strip()]
        return Plan(lines, response.headers.get("ETag"))


def show(plan: Plan, as_json: bool, out: TextIO | None = None) -> int:
    """Print the plan (a diff, or its NDJSON lines); returns the plan's exit code."""
    out = out or sys.stdout
    counts = plan.counts()
    if as_json:
        for line in plan.lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    else:
        for line in plan.lines:
            for text in diff_lines(line):
                out.write(text + "\n")
        out.write(f"{counts['unchanged']:,} unchanged\n")
    out.flush()
    print(summary(counts), file=sys.stderr)
    if counts["invalid"]:
        return ERROR
    return CHANGES if plan.changes_anything() else NO_CHANGES


def summary(counts: Counter[str]) -> str:
    parts = [
        f"{counts['create']:,} to create",
        f"{counts['update']:,} to update",
        f"{counts['delete']:,} to delete",
        f"{counts['unchanged']:,} unchanged",
    ]
    if counts["invalid"]:
        parts.append(f"{counts['invalid']:,} invalid")
    return "plan: " + ", ".join(parts)


def diff_lines(line: dict[str, Any]) -> list[str]:
    """A plan line as diff lines: none for an unchanged one."""
    action = line["action"]
    if action not in MARKS:
        return []
    name = json.dumps(line.get("custom_id"), ensure_ascii=False)
    head = f"{MARKS[action]} {name}"
    if action == "invalid":
        return [f"{head} ({line['status_code']}): {_detail(line.get('body'))}"]
    if action == "create":
        return [f"{head} (new, model {json.dumps(line['body'].get('model'))})"]
    if action == "delete":
        return [f"{head} ({line['body'].get('id')})"]
    shown = [f"{head} ({line['body'].get('id')})"]
    for field, change in (line.get("changes") or {}).items():
        before = json.dumps(change.get("from"), ensure_ascii=False)
        after = json.dumps(change.get("to"), ensure_ascii=False)
        shown.append(f"    {field}: {before} -> {after}")
    return shown


def _detail(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list) and detail:
        first = detail[0]
        field = ".".join(str(part) for part in first.get("loc", [])[1:])
        more = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
        return f"{field}: {first.get('msg')}{more}" if field else f"{first.get('msg')}{more}"
    return str(detail)
