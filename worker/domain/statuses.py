"""Every status a stored thing can have, each written once."""

from __future__ import annotations

from enum import StrEnum


class UnitStatus(StrEnum):
    """A work unit: one single create, or one chunk of a batch."""

    STAGED = "staged"  # a chunk stored while the rest of its batch streams in
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


OPEN_UNIT = (UnitStatus.QUEUED, UnitStatus.IN_PROGRESS)
CLOSED_UNIT = (UnitStatus.DONE, UnitStatus.CANCELLED)


class JobStatus(StrEnum):
    """A job as the API shows it, derived from its unit and its result code."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class BatchStatus(StrEnum):
    VALIDATING = "validating"  # being stored: invisible and unsent
    IN_PROGRESS = "in_progress"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
