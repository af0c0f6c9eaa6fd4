"""The shapes of stored documents, for the type checker."""

from __future__ import annotations

from typing import Any, NamedTuple, NotRequired, TypedDict

# A document as pymongo reads and writes it.
Doc = dict[str, Any]


class Item(TypedDict):
    """One request of a unit: its job id, the batch line's custom_id, the raw body;
    a modify or delete also names its operation and the assistant it targets."""

    id: str
    custom_id: str | None
    body: str
    op: NotRequired[str]  # "modify", "delete" or "apply"; a create has none
    # The assistant a modify or delete changes; for an apply line, the
    # assistant its key named when the edge stored it (none for a new key).
    target: NotRequired[str]
    # For an apply line sent with If-Match: the version of its assistant that
    # the checked plan saw ("" for none); it applies only at that version.
    expect: NotRequired[str]
    # The edge request that carried it, in a unit holding several single creates.
    request_id: NotRequired[str | None]


class Unit(TypedDict):
    """A work unit: one single create, single creates accepted together, or up
    to a chunk of a batch's requests, with their results in parallel arrays."""

    _id: str
    tenant: str
    seq: int
    status: str
    created_at: int
    started_at: int | None
    completed_at: int | None
    due_at: NotRequired[float]
    # When the edge accepted it (Unix seconds, a float): orders assistant ids
    # and the changes of one assistant. Units stored before it have created_at.
    accepted_at: NotRequired[float]
    attempts: int
    callback_url: str | None
    request_id: str | None
    job_events: bool
    items: list[Item]
    codes: list[int | None]
    results: list[str | None]
    job_statuses: list[str]
    batch_id: NotRequired[str]
    lease: NotRequired[str]
    # The assistants its modifies and deletes target, and the jobs among them
    # whose delete is under way (so a redelivery knows it deleted the target).
    targets: NotRequired[list[str]]
    deleting: NotRequired[list[str]]
    # Per request, what a 200 did ("created", "updated", "unchanged",
    # "deleted"), where the operation alone does not say (apply lines).
    actions: NotRequired[list[str | None]]
    # The chunk of an apply batch with `prune=true` that deletes the keyed
    # assistants the manifest leaves out; its items are planned when it runs.
    prune: NotRequired[bool]
    planned: NotRequired[bool]  # a prune chunk whose deletions are written down
    # A chunk of an apply batch whose every line the edge found unchanged when it
    # took the batch: stored with its results, done once the batch is, never sent.
    settled: NotRequired[bool]
    # Set when the reconciler sent it again: its next run claims it (`units.take`).
    resent: NotRequired[bool]
    # Set when it was held back for an earlier change of its assistants: the
    # change that finishes sends it again (`changes.wake`).
    held: NotRequired[bool]
    # In a worker's hands only, never stored: taken as read, without a claim.
    unclaimed: NotRequired[bool]


class Tally(NamedTuple):
    """What a finished chunk adds to its batch's request counts."""

    completed: int
    failed: int
    cancelled: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


class Delivery(TypedDict):
    _id: str
    tenant: str
    event_type: str
    url: str
    body: str
    status: str
    attempts: list[Doc]
    next_attempt_at: float
    swept_at: float
    created_at: int
    expire_at: Any
    retry_from: NotRequired[int]
    lease: NotRequired[str]
    lease_expires: NotRequired[float]
    # A job event of a batch: its batch's id.
    batch_id: NotRequired[str]
    # A batch event of a batch with job events: not attempted before each of
    # them had its first attempt (`deliveries.claim`).
    after_jobs_of: NotRequired[str]
