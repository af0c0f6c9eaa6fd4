"""When finished records expire: MongoDB TTL indexes read naive UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.settings import Settings


def expire_at(settings: Settings, finished_at: float) -> datetime:
    finished = datetime.fromtimestamp(finished_at, UTC).replace(tzinfo=None)
    return finished + timedelta(days=settings.retention_days)
