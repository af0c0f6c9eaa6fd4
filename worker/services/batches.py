"""Batches: many requests stored as chunk units, counted from the units themselves.

No multi-document transactions: a batch is stored as `validating` (invisible,
not sent) until every chunk is in, and the reconciler removes one a crash
left half-stored. Counters are recomputed from the chunks' tallies, so a
redelivered chunk cannot count twice.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from typing import IO, cast

import bson

from worker.domain import assistants as assistant_docs
from worker.domain.batches import new_batch, tally
from worker.domain.documents import Doc, Item, Tally, Unit
from worker.domain.ids import new_ids
from worker.domain.retention import expire_at
from worker.domain.schema import validate_create
from worker.domain.statuses import BatchStatus, JobStatus, UnitStatus
from worker.domain.units import item_action, new_unit, result_body, result_changes
from worker.runtime import Runtime
from worker.services import outbox, planning, turns
from worker.store import assistants, batches, units
from worker.store.connection import Store

log = logging.getLogger(__name__)


SPOOL_IN_MEMORY = 4 << 20


def chunk_id(batch_id: str, seq: int) -> str:
    return f"{batch_id}.{seq:06d}"


class Stager:
    """Stores a batch chunk by chunk as its requests stream in.

    Chunks are inserted `staged`, invisible and unsent; `commit` makes the
    whole batch visible and sends it, `abort` removes it.
    """

    def __init__(self, rt: Runtime, batch: Doc) -> None:
        self.rt = rt
        self.batch = batch
        self.seq = 0
        self.items: list[Item] = []
        self.size = 0
        self.next_stamp = 0.0
        # Apply batches: what the tenant's open changes target (and whether a
        # prune is open), read before the first chunk's assistants; the
        # assistants lines named so far; and the chunks answered here, with
        # their tallies.
        self.busy: set[str] | None = None
        self.pruning = False
        self.named: set[str] = set()
        self.settled: dict[int, Tally] = {}
        # The chunks a worker must run, with when each was accepted: their
        # order in the tenant's line.
        self.waiting: list[tuple[str, float]] = []
        # Those chunks wait here until the commit, which stores them done: a
        # spool, moved to disk as it grows, so memory stays flat. Closed by
        # `commit` or `abort`, one of which ends every stager.
        self.answered: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)  # noqa: SIM115
        batches.insert(rt.store, batch)

    def add(
        self,
        custom_id: str,
        body_text: str,
        *,
        op: str | None = None,
        target: str | None = None,
        expect: str | None = None,
    ) -> None:
        item: Item = {"id": "", "custom_id": custom_id, "body": body_text}
        if op is not None:
            item["op"] = op
        if target is not None:
            item["target"] = target
        if expect is not None:
            item["expect"] = expect
        self.items.append(item)
        self.size += len(body_text)
        settings = self.rt.settings
        if len(self.items) >= settings.chunk_size or self.size >= settings.chunk_max_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.items:
            return
        for item, job_id in zip(self.items, new_ids("job_", len(self.items)), strict=True):
            item["id"] = job_id
        answers = self._settle(self._name_targets()) if self.batch.get("mode") == "apply" else None
        # Each chunk's stamp follows the last one's lines (an item's assistant id
        # adds its place in the chunk, in 2**-24 s ticks), so ids keep input order.
        accepted_at = max(time.time(), self.next_stamp)
        self.next_stamp = accepted_at + (len(self.items) + 8) / 2**24
        unit = new_unit(
            unit_id=chunk_id(self.batch["_id"], self.seq),
            tenant=self.batch["tenant"],
            items=self.items,
            now=self.batch["created_at"],
            callback_url=self.batch.get("callback_url"),
            request_id=self.batch.get("request_id"),
            batch_id=self.batch["_id"],
            seq=self.seq,
            job_events=self.batch["job_events"],
            accepted_at=accepted_at,
        )
        if answers is not None:
            unit["settled"] = True
            unit["codes"] = [200] * len(answers)
            unit["results"] = answers
            unit["actions"] = ["unchanged"] * len(answers)
            self.settled[self.seq] = tally(cast(Doc, unit))
            self.answered.write(bson.encode(unit))
        else:
            units.insert_staged(self.rt.store, unit)
            self.waiting.append((unit["_id"], accepted_at))
        self.seq += 1
        self.items, self.size = [], 0

    def _name_targets(self) -> list[Doc | None]:
        """Apply lines of assistants that exist now target them, so they apply in
        order with those assistants' modifies and deletes (one lookup of the
        chunk's names). A new key has no target: its key's unique index orders
        its creation. Returns each line's assistant as read (its id, times and
        content hash).

        What the tenant's open changes target is read first, once: in this
        order, a change accepted before that read either shows in it or is
        already in what the lookups find."""
        tenant = self.batch["tenant"]
        if self.busy is None:
            self.busy, self.pruning = units.open_changes_of(self.rt.store, tenant)
        names = [item["custom_id"] or "" for item in self.items]
        found = assistants.find_named(self.rt.store, tenant, names, assistants.APPLY_VIEW)
        docs: list[Doc | None] = []
        for item, name in zip(self.items, names, strict=True):
            doc = found.get(name)
            if doc is not None:
                item["target"] = doc["id"]
            docs.append(doc)
        return docs

    def _settle(self, docs: list[Doc | None]) -> list[str | None] | None:
        """The chunk's results, answered here, if every line is `unchanged`: its
        assistant, as read after no open change of it was seen, has the content
        the line's valid body hashes as. Such a line writes nothing, so it needs
        no worker and no place in any assistant's order of changes: the chunk
        is stored with its results and its lines target nothing. A line whose
        assistant an earlier line of the upload names waits its turn. None if
        any line must go to a worker."""
        fresh = not self.pruning
        busy = self.busy or set()
        for doc in docs:
            if doc is None or doc["id"] in busy or doc["id"] in self.named:
                fresh = False
            if doc is not None:
                self.named.add(doc["id"])
        if not fresh:
            return None
        models = self.rt.settings.models
        answers: list[str | None] = []
        for item, doc in zip(self.items, docs, strict=True):
            assert doc is not None
            body = json.loads(item["body"])
            if isinstance(validate_create(body, models), list):
                return None
            if assistant_docs.decide(doc, body)[0] != "unchanged":
                return None
            answers.append(json.dumps(assistant_docs.reference(doc), ensure_ascii=False))
        for item in self.items:
            del item["target"]
        return answers

    def commit(self, total: int) -> Doc:
        """Make the batch visible and put its chunks in the tenant's line; returns
        the batch."""
        self._flush()
        if self.batch.get("prune"):
            self._add_prune_chunk()
        batch_id = self.batch["_id"]
        now = int(time.time())
        self.answered.seek(0)
        units.insert_settled(
            self.rt.store,
            cast(Iterator[Unit], bson.decode_file_iter(self.answered)),
            now=now,
            expire_at=expire_at(self.rt.settings, now),
            owing=self.batch["job_events"],
        )
        self.answered.close()
        tenant = self.batch["tenant"]
        units.queue_staged(
            self.rt.store, tenant, batch_id, now + self.rt.settings.resend_after_seconds
        )
        # The edge answers 202 after this write: journaled, it holds the chunks too.
        doc = batches.commit(self.rt.store, tenant, batch_id, now=now, total=total, chunks=self.seq)
        try:
            if not self._express(total):
                turns.join(self.rt, tenant, self.waiting)
        except Exception:  # stored: the reconciler puts in line what did not go
            log.warning("batch %s stored but not all in line; the reconciler will", batch_id)
        if self.settled:
            return self._tell_settled(doc)
        return doc

    def _express(self, total: int) -> bool:
        """A small batch skips the line (see `turns`): True if it was sent so."""
        if len(self.waiting) != 1 or not 0 < total <= self.rt.settings.express_batch_lines:
            return False
        return turns.express(self.rt, self.batch["tenant"], self.waiting[0][0])

    def _tell_settled(self, doc: Doc) -> Doc:
        """Count the chunks answered here (finishing the batch if they are all of
        it) and flush their job events, as a worker does for the chunks it
        finishes; returns the batch as it is now. If this fails, the stored
        batch is accepted all the same: the reconciler tallies and flushes."""
        batch_id, tenant = self.batch["_id"], self.batch["tenant"]
        try:
            if self.batch["job_events"]:
                outbox.flush_unit_events(self.rt, [chunk_id(batch_id, s) for s in self.settled])
            refresh(self.rt, tenant, batch_id, self.settled)
            return batches.get(self.rt.store, tenant, batch_id) or doc
        except Exception:
            log.warning(
                "batch %s: chunks answered at the edge left to the reconciler",
                batch_id,
                exc_info=True,
            )
            return doc

    def _add_prune_chunk(self) -> None:
        """The last chunk deletes the keyed assistants the manifest leaves out;
        it plans its lines when it runs, and its results follow the input's."""
        unit = new_unit(
            unit_id=chunk_id(self.batch["_id"], self.seq),
            tenant=self.batch["tenant"],
            items=[],
            now=self.batch["created_at"],
            callback_url=self.batch.get("callback_url"),
            request_id=self.batch.get("request_id"),
            batch_id=self.batch["_id"],
            seq=self.seq,
            job_events=False,
            accepted_at=max(time.time(), self.next_stamp),
        )
        unit["prune"] = True
        units.insert_staged(self.rt.store, unit)
        self.waiting.append((unit["_id"], unit["accepted_at"]))
        self.seq += 1

    def abort(self) -> None:
        self.answered.close()
        units.delete_batch_units(self.rt.store, self.batch["tenant"], self.batch["_id"])
        batches.delete(self.rt.store, self.batch["tenant"], self.batch["_id"])


def refresh(rt: Runtime, tenant: str, batch_id: str, tallies: dict[int, Tally]) -> None:
    """Record what chunks of a batch finished with, and finish the batch after its last.

    Each chunk's tally goes under its own key, so recording it again (a
    redelivered chunk, a reconciler pass) changes nothing.
    """
    doc = batches.add_tallies(rt.store, tenant, batch_id, tallies)
    if doc is None or len(doc.get("tally") or {}) < doc.get("chunks", 0):
        return
    now = int(time.time())
    for current, final, stamp, event in (
        (BatchStatus.IN_PROGRESS, BatchStatus.COMPLETED, "completed_at", "batch.completed"),
        (BatchStatus.CANCELLING, BatchStatus.CANCELLED, "cancelled_at", "batch.cancelled"),
    ):
        if batches.finish(
            rt.store,
            tenant,
            batch_id,
            current=current,
            final=final,
            stamp=stamp,
            event=event,
            now=now,
            expire_at=expire_at(rt.settings, now),
        ):
            # Requests waiting on the batch (`Prefer: wait`) hear its id as a
            # finished job's, and read it again.
            rt.publish_finished({batch_id: None})
            outbox.flush_batch_event(rt, tenant, batch_id)
            return


def settle(rt: Runtime, tenant: str, batch_id: str) -> None:
    """Tally chunks that finished without being counted (a crash in between)."""
    known = batches.tallied_seqs(rt.store, tenant, batch_id)
    if known is None:
        return
    missing = units.closed_chunks(rt.store, tenant, batch_id, known)
    refresh(rt, tenant, batch_id, {unit["seq"]: tally(unit) for unit in missing})


def cancel(rt: Runtime, tenant: str, batch_id: str) -> Doc | None:
    """Cancel the chunks not yet started; started ones finish."""
    now = int(time.time())
    batches.start_cancelling(rt.store, tenant, batch_id, now)
    doc = batches.get(rt.store, tenant, batch_id)
    if doc is None:
        return None
    if doc["status"] == BatchStatus.CANCELLING:
        units.cancel_queued(rt.store, tenant, batch_id, now, expire_at(rt.settings, now))
        settle(rt, tenant, batch_id)
        doc = batches.get(rt.store, tenant, batch_id)
    return doc


def iter_results(store: Store, tenant: str, batch_id: str, status: str | None) -> Iterator[Doc]:
    """Finished requests in input order, one chunk in memory at a time; the
    process's other requests get turns while a chunk's lines are made."""
    for unit in units.iter_chunks(store, tenant, batch_id):
        for index, item in enumerate(unit["items"]):
            planning.breathe()
            code = unit["codes"][index]
            if code is None:
                if unit["status"] != UnitStatus.CANCELLED or status not in (
                    None,
                    JobStatus.CANCELLED,
                ):
                    continue
                yield {
                    "custom_id": item["custom_id"],
                    "job_id": item["id"],
                    "status_code": None,
                    "body": None,
                    "action": None,
                    "status": JobStatus.CANCELLED,
                }
                continue
            outcome = JobStatus.SUCCEEDED if code == 200 else JobStatus.FAILED
            if status is not None and status != outcome:
                continue
            line = {
                "custom_id": item["custom_id"],
                "job_id": item["id"] or None,  # a prune deletion has no job
                "status_code": code,
                "body": result_body(unit, index),
                "action": item_action(unit, index),
            }
            if line["action"] == "updated" and (changed := result_changes(unit, index)):
                line["changes"] = changed
            yield line


# Retries: a new batch of a finished batch's failed or cancelled lines.

# What `only` keeps of a finished batch's lines.
RETRYABLE: dict[str | None, tuple[str, ...]] = {
    None: (JobStatus.FAILED, JobStatus.CANCELLED),
    JobStatus.FAILED: (JobStatus.FAILED,),
    JobStatus.CANCELLED: (JobStatus.CANCELLED,),
}


class RetryRefused(Exception):
    """Why a batch cannot be retried now (the 409's detail)."""


def line_outcomes(store: Store, tenant: str, batch_id: str) -> Iterator[tuple[Item, str | None]]:
    """Each request line of the batch in input order, with how it ended
    (`succeeded`, `failed`, `cancelled`), None while it is open. A prune's
    deletions are not lines of the input and are left out."""
    for unit in units.iter_chunks(store, tenant, batch_id):
        if unit.get("prune"):
            continue
        for index, item in enumerate(unit["items"]):
            code = unit["codes"][index]
            if code is not None:
                outcome: str | None = JobStatus.SUCCEEDED if code == 200 else JobStatus.FAILED
            elif unit["status"] == UnitStatus.CANCELLED:
                outcome = JobStatus.CANCELLED
            else:
                outcome = None
            yield item, outcome


def input_line(item: Item) -> Doc:
    """A line as it can be submitted again: its custom_id, the `method` and `url`
    of a modify or delete, and its body."""
    line: Doc = {"custom_id": item["custom_id"]}
    op, target = item.get("op"), item.get("target")
    if op in ("modify", "delete") and target is not None:
        line["method"] = "DELETE" if op == "delete" else "POST"
        line["url"] = f"/v1/assistants/{target}"
    line["body"] = json.loads(item["body"])
    return line


def iter_input(store: Store, tenant: str, batch_id: str, status: str | None) -> Iterator[Doc]:
    """The batch's finished lines (of `status`, if given) as input lines."""
    for item, outcome in line_outcomes(store, tenant, batch_id):
        if outcome is not None and status in (None, outcome):
            yield input_line(item)


def retry(
    rt: Runtime, tenant: str, batch_id: str, *, only: str | None, request_id: str | None
) -> Doc | None:
    """Store a new batch holding the lines of a finished batch whose results failed
    or were cancelled (`only` one of these), with their custom_ids and bodies,
    in the parent's mode, job events, callback and metadata, and put it in the
    tenant's line. The parent is unchanged. None if the tenant has no such batch;
    RetryRefused while it is still running or when it has nothing to retry.

    A prune is not carried over: it would delete every keyed assistant the
    retried lines leave out.
    """
    parent = batches.get(rt.store, tenant, batch_id)
    if parent is None:
        return None
    if parent["status"] in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        raise RetryRefused(
            f"Batch {batch_id} is still {parent['status']}; retry it once it is "
            "completed or cancelled"
        )
    wanted = RETRYABLE[only]
    stager: Stager | None = None
    count = 0
    try:
        for item, outcome in line_outcomes(rt.store, tenant, batch_id):
            if outcome not in wanted:
                continue
            if stager is None:  # stored only once there is a line to retry
                stager = Stager(rt, _retry_batch(parent, request_id))
            op = item.get("op")
            # An apply line finds its assistant again, as it is now.
            target = item.get("target") if op in ("modify", "delete") else None
            stager.add(item["custom_id"] or "", item["body"], op=op, target=target)
            count += 1
        if stager is None:
            which = " or ".join(wanted)
            raise RetryRefused(f"Batch {batch_id} has no {which} lines left to retry")
        return stager.commit(count)
    except BaseException:
        if stager is not None:
            stager.abort()
        raise


def _retry_batch(parent: Doc, request_id: str | None) -> Doc:
    doc = new_batch(
        batch_id=new_ids("batch_", 1)[0],
        tenant=parent["tenant"],
        total=0,
        now=int(time.time()),
        callback_url=parent.get("callback_url"),
        metadata={},
        job_events=parent["job_events"],
        request_id=request_id,
        mode=parent.get("mode", "create"),
        retry_of=parent["_id"],
    )
    doc["metadata_json"] = parent.get("metadata_json") or "{}"
    return doc
