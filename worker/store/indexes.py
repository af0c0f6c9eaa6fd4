"""Every index, each declared by the module whose queries need it; made at start."""

from __future__ import annotations

from worker.store import assistants, batches, deliveries, idempotency, tenants, units
from worker.store.connection import Store


def ensure_indexes(store: Store) -> None:
    for module in (assistants, batches, deliveries, idempotency, tenants, units):
        module.ensure_indexes(store)
