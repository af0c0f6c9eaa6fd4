"""Celery's configuration, from settings: one definition for the workers, beat,
Flower and every process that only sends."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from worker.queueing.routes import (
    PRIORITY_SEP,
    PRIORITY_STEPS,
    QUEUE_OF,
    RECONCILE,
    SINGLE_QUEUE,
    SWEEP_WEBHOOKS,
    broker_prefix,
)
from worker.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        # Job state lives in MongoDB; the result backend is not used.
        "task_ignore_result": True,
        # At-least-once: a message is acknowledged only after its work is
        # recorded, and redelivered if the worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Well above the longest task, so an unacked message is not redelivered
        # while its task still runs; the reconciler covers lost ones sooner.
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "global_keyprefix": broker_prefix(settings.redis_prefix),
            # The single-create queue's lanes (worker/services/lanes.py): named
            # here so the metrics, the reconciler and the lanes agree with kombu.
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEP,
        },
        "task_default_queue": SINGLE_QUEUE,
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_OF.items()},
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        # Beat's record of when it last ran each entry: scratch (every entry is a
        # short fixed interval), so in the temporary folder, never in whatever
        # folder beat was started from. `dev` keeps it under its data folder.
        "beat_schedule_filename": str(
            Path(tempfile.gettempdir()) / f"assistant-ingest-beat-{settings.redis_prefix}"
        ),
        "beat_schedule": {
            "reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_seconds},
            "sweep-webhooks": {
                "task": SWEEP_WEBHOOKS,
                "schedule": settings.webhook_sweep_interval_seconds,
            },
        },
    }
