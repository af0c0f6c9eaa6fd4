"""Batches: many requests stored as chunk units, counted from the units themselves.

No multi-document transactions: a batch is stored as `validating` (invisible,
not sent) until every chunk is in, and the reconciler removes one a crash
left half-stored. Counters are recomputed from the chunks' tallies, so a
redelivered chunk cannot count twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from worker.domain.batches import tally
from worker.domain.documents import Doc, Item, Tally
from worker.domain.ids import new_ids
from worker.domain.retention import expire_at
from worker.domain.statuses import BatchStatus, JobStatus, UnitStatus
from worker.domain.units import item_action, new_unit, result_body
from worker.queueing.routes import PROCESS_CHUNK
from worker.runtime import Runtime
from worker.services import outbox
from worker.store import assistants, batches, units
from worker.store.connection import Store

log = logging.getLogger(__name__)


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
        self.keyed: dict[str, str] | None = None
        batches.insert(rt.store, batch)

    def add(
        self, custom_id: str, body_text: str, *, op: str | None = None, target: str | None = None
    ) -> None:
        item: Item = {"id": "", "custom_id": custom_id, "body": body_text}
        if op is not None:
            item["op"] = op
        if target is not None:
            item["target"] = target
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
        if self.batch.get("mode") == "apply":
            self._name_targets()
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
        units.insert_staged(self.rt.store, unit)
        self.seq += 1
        self.items, self.size = [], 0

    def _name_targets(self) -> None:
        """Apply lines of assistants that exist now target them, so they apply in
        order with those assistants' modifies and deletes (one read a chunk).
        A new key has no target: its key's unique index orders its creation."""
        tenant = self.batch["tenant"]
        if self.keyed is None:  # the tenant's keys, read once for the whole upload
            self.keyed = assistants.keyed_ids(self.rt.store, tenant)
        keyed = self.keyed
        ids = [
            name
            for item in self.items
            if (name := item["custom_id"] or "") not in keyed and assistants.may_be_id(name)
        ]
        found = assistants.find_mine(self.rt.store, tenant, ids)
        for item in self.items:
            name = item["custom_id"] or ""
            target = keyed.get(name) or (name if name in found else None)
            if target is not None:
                item["target"] = target

    def commit(self, total: int) -> Doc:
        """Make the batch visible and send its chunks; returns the batch."""
        self._flush()
        if self.batch.get("prune"):
            self._add_prune_chunk()
        batch_id = self.batch["_id"]
        now = int(time.time())
        units.queue_staged(self.rt.store, batch_id, now + self.rt.settings.resend_after_seconds)
        # The edge answers 202 after this write: journaled, it holds the chunks too.
        doc = batches.commit(self.rt.store, batch_id, now=now, total=total, chunks=self.seq)
        try:
            for seq in range(self.seq):
                self.rt.sender.send(PROCESS_CHUNK, chunk_id(batch_id, seq))
        except Exception:  # stored: the reconciler sends what did not go
            log.warning("batch %s stored but not all sent; the reconciler will", batch_id)
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
        self.seq += 1

    def abort(self) -> None:
        units.delete_batch_units(self.rt.store, self.batch["_id"])
        batches.delete(self.rt.store, self.batch["_id"])


def refresh(rt: Runtime, batch_id: str, tallies: dict[int, Tally]) -> None:
    """Record what chunks of a batch finished with, and finish the batch after its last.

    Each chunk's tally goes under its own key, so recording it again (a
    redelivered chunk, a reconciler pass) changes nothing.
    """
    doc = batches.add_tallies(rt.store, batch_id, tallies)
    if doc is None or len(doc.get("tally") or {}) < doc.get("chunks", 0):
        return
    now = int(time.time())
    for current, final, stamp, event in (
        (BatchStatus.IN_PROGRESS, BatchStatus.COMPLETED, "completed_at", "batch.completed"),
        (BatchStatus.CANCELLING, BatchStatus.CANCELLED, "cancelled_at", "batch.cancelled"),
    ):
        if batches.finish(
            rt.store,
            batch_id,
            current=current,
            final=final,
            stamp=stamp,
            event=event,
            now=now,
            expire_at=expire_at(rt.settings, now),
        ):
            outbox.flush_batch_event(rt, batch_id)
            return


def settle(rt: Runtime, batch_id: str) -> None:
    """Tally chunks that finished without being counted (a crash in between)."""
    known = batches.tallied_seqs(rt.store, batch_id)
    if known is None:
        return
    missing = units.closed_chunks(rt.store, batch_id, known)
    refresh(rt, batch_id, {unit["seq"]: tally(unit) for unit in missing})


def cancel(rt: Runtime, tenant: str, batch_id: str) -> Doc | None:
    """Cancel the chunks not yet started; started ones finish."""
    now = int(time.time())
    batches.start_cancelling(rt.store, tenant, batch_id, now)
    doc = batches.get(rt.store, tenant, batch_id)
    if doc is None:
        return None
    if doc["status"] == BatchStatus.CANCELLING:
        units.cancel_queued(rt.store, batch_id, now, expire_at(rt.settings, now))
        settle(rt, batch_id)
        doc = batches.get(rt.store, tenant, batch_id)
    return doc


def iter_results(store: Store, batch_id: str, status: str | None) -> Iterator[Doc]:
    """Finished requests in input order, one chunk in memory at a time."""
    for unit in units.iter_chunks(store, batch_id):
        for index, item in enumerate(unit["items"]):
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
            yield {
                "custom_id": item["custom_id"],
                "job_id": item["id"] or None,  # a prune deletion has no job
                "status_code": code,
                "body": result_body(unit, index),
                "action": item_action(unit, index),
            }
