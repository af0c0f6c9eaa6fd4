"""`assistant-ingest apply` and `export`: provisioning as code.

    assistant-ingest apply assistants.jsonl --dry-run     # the plan; nothing changes
    assistant-ingest apply assistants.jsonl --prune --wait
    assistant-ingest export > assistants.jsonl

A manifest is an apply batch: one `{"custom_id": KEY, "body": {...}}` a line.
Progress and the summary go to stderr; data (the plan, the batch, the export)
to stdout. Line numbers are the file's, counted from 1 as editors count them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from cli import bulk, plans

SHOWN = 20  # failed lines listed in the summary


def add_parsers(sub: Any) -> None:
    apply = sub.add_parser("apply", help="bring the assistants to a manifest (JSONL)")
    bulk.add_api_options(apply)
    apply.add_argument("file", type=Path)
    apply.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    apply.add_argument(
        "--prune", action="store_true", help="also delete keyed assistants the file leaves out"
    )
    apply.add_argument("--wait", action="store_true", help="show progress, then a summary")
    apply.add_argument("--json", action="store_true", help="report an error as one JSON line")
    apply.add_argument(
        "--if-plan",
        action="store_true",
        help="plan, show the diff, ask, then apply only that plan (If-Match: its ETag)",
    )
    apply.add_argument("--yes", action="store_true", help="with --if-plan: apply without asking")
    export = sub.add_parser("export", help="write every assistant as a manifest (JSONL)")
    bulk.add_api_options(export)
    export.add_argument("--output", "-o", type=Path, default=None)
    export.add_argument("--json", action="store_true", help="report an error as one JSON line")


def run(args: argparse.Namespace) -> int:
    if not args.api_key:
        return bulk.fail(args, bulk.UNUSABLE, "give --api-key or set ASSISTANT_INGEST_API_KEY")
    client = bulk.Client(bulk.api_base(args.url), args.api_key)
    if args.command == "apply" and args.if_plan:
        return bulk.guarded(args, client, apply_planned)
    return bulk.guarded(args, client, apply if args.command == "apply" else export)


def apply(client: bulk.Client, args: argparse.Namespace) -> int:
    query = "mode=apply" + ("&prune=true" if args.prune else "")
    if args.dry_run:
        query += "&dry_run=true"
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Length": str(args.file.stat().st_size),
    }
    with (
        args.file.open("rb") as upload,
        client.open("POST", f"/v1/batches?{query}", upload, headers) as response,
    ):
        if args.dry_run:
            return _plan(response, args.file)
        batch = json.load(response)
    total = batch["request_counts"]["total"]
    print(f"batch {batch['id']}: {bulk.plural(total, 'line')}", file=sys.stderr)
    if not args.wait:
        print(json.dumps(batch))
        return 0
    batch = bulk.follow(client, batch)
    failures: list[dict[str, Any]] = []
    if batch["request_counts"]["failed"]:
        with client.open("GET", f"/v1/batches/{batch['id']}/results?status=failed") as rows:
            failures = [json.loads(line) for line, _ in zip(rows, range(SHOWN), strict=False)]
    counts = batch["request_counts"]
    _summary(
        [(name, counts[name]) for name in ("created", "updated", "unchanged", "deleted", "failed")],
        failures,
        counts["failed"],
        _line_numbers(args.file),
    )
    print(json.dumps(batch))
    return 0 if counts["failed"] == 0 else 3


def _plan(response: Any, path: Path) -> int:
    """Copy the plan to stdout as it streams, then summarize it."""
    actions: Counter[str] = Counter()
    invalid: list[dict[str, Any]] = []
    for raw in response:
        sys.stdout.write(raw.decode("utf-8"))
        line = json.loads(raw)
        actions[line["action"]] += 1
        if line["action"] == "invalid" and len(invalid) < SHOWN:
            invalid.append(line)
    sys.stdout.flush()
    _summary(
        [
            ("create", actions["create"]),
            ("update", actions["update"]),
            ("unchanged", actions["unchanged"]),
            ("delete", actions["delete"]),
            ("invalid", actions["invalid"]),
        ],
        invalid,
        actions["invalid"],
        _line_numbers(path),
        heading="plan (dry run, nothing changed)",
    )
    return 0 if actions["invalid"] == 0 else 3


def _summary(
    rows: list[tuple[str, int]],
    failures: list[dict[str, Any]],
    failed: int,
    lines: dict[str, int],
    heading: str = "applied",
) -> None:
    width = max(len(f"{count:,}") for _, count in rows)
    print(f"{heading}:", file=sys.stderr)
    for name, count in rows:
        print(f"  {name:<10} {count:>{width},}", file=sys.stderr)
    for row in failures:
        where = f"line {lines[row['custom_id']]}" if row["custom_id"] in lines else "line ?"
        print(
            f"  {where} (custom_id {json.dumps(row['custom_id'])}): {_first_error(row)}",
            file=sys.stderr,
        )
    if failed > len(failures):
        print(f"  ... and {failed - len(failures):,} more", file=sys.stderr)


def _first_error(row: dict[str, Any]) -> str:
    detail = (row.get("body") or {}).get("detail")
    if isinstance(detail, list) and detail:
        first = detail[0]
        field = ".".join(str(part) for part in first.get("loc", [])[1:])
        more = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
        return f"{field}: {first.get('msg')}{more}" if field else f"{first.get('msg')}{more}"
    return str(detail if detail is not None else row.get("status_code"))


def _line_numbers(path: Path) -> dict[str, int]:
    """Each custom_id's line in the file, counted from 1."""
    found: dict[str, int] = {}
    with path.open("rb") as manifest:
        for number, raw in enumerate(manifest, start=1):
            try:
                value = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("custom_id"), str):
                found.setdefault(value["custom_id"], number)
    return found


def apply_planned(client: bulk.Client, args: argparse.Namespace) -> int:
    """`apply --if-plan`: plan, show the diff (stderr), ask (unless --yes), then
    apply with `If-Match: <the plan's ETag>`, so what runs is what was shown; a
    plan that no longer holds is refused whole (HTTP 412, exit 1)."""
    if args.dry_run:
        return bulk.fail(args, bulk.UNUSABLE, "--if-plan applies; for the plan alone use `plan`")
    plan = plans.fetch(client, args.file, prune=args.prune)
    code = plans.show(plan, False, out=sys.stderr)
    if code == plans.ERROR:
        print("not applied: the plan has invalid lines", file=sys.stderr)
        return 3
    if code == plans.NO_CHANGES:
        print("nothing to apply", file=sys.stderr)
        return 0
    if plan.etag is None:
        return bulk.fail(args, bulk.REFUSED, "the server's plan has no ETag to apply it by")
    if not args.yes:
        if not sys.stdin.isatty():
            return bulk.fail(args, bulk.UNUSABLE, "--if-plan asks before applying: give --yes")
        print("Apply this plan? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("not applied", file=sys.stderr)
            return 0
    headers = {
        "Content-Type": "application/x-ndjson",
        "Content-Length": str(args.file.stat().st_size),
        "If-Match": plan.etag,
    }
    query = "mode=apply" + ("&prune=true" if args.prune else "")
    with (
        args.file.open("rb") as upload,
        client.open("POST", f"/v1/batches?{query}", upload, headers) as response,
    ):
        batch = json.load(response)
    total = batch["request_counts"]["total"]
    print(f"batch {batch['id']}: {bulk.plural(total, 'line')}", file=sys.stderr)
    if args.wait:
        batch = bulk.follow(client, batch)
        counts = batch["request_counts"]
        _summary(
            [
                (name, counts[name])
                for name in ("created", "updated", "unchanged", "deleted", "failed")
            ],
            [],
            0,
            {},
        )
        print(json.dumps(batch))
        return 0 if counts["failed"] == 0 else 3
    print(json.dumps(batch))
    return 0


def export(client: bulk.Client, args: argparse.Namespace) -> int:
    return bulk.download(client, "/v1/assistants/export", args.output)
