"""The Celery app: a module-level object (for `celery -A`), configured from
settings by the entry point, never at import; it opens no connection here."""

from __future__ import annotations

from celery import Celery

from worker.runtime import Runtime, for_process
from worker.settings import Settings

SINGLE_QUEUE = "single"
BULK_QUEUE = "bulk"
WEBHOOK_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = (SINGLE_QUEUE, BULK_QUEUE, WEBHOOK_QUEUE, MAINTENANCE_QUEUE)

app = Celery("assistant_ingest")

_settings: list[Settings] = []


def configure(settings: Settings) -> Celery:
    _settings[:] = [settings]
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        # Job state lives in MongoDB; the result backend is not used.
        task_ignore_result=True,
        # At-least-once: a message is acknowledged only after its work is
        # recorded, and redelivered if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Well above the longest task, so an unacked message is not redelivered
        # while its task still runs; the reconciler covers lost ones sooner.
        broker_transport_options={
            "visibility_timeout": 3600,
            "global_keyprefix": f"{settings.redis_prefix}:celery:",
        },
        task_default_queue=SINGLE_QUEUE,
        task_routes={
            "assistants.process_single": {"queue": SINGLE_QUEUE},
            "assistants.process_chunk": {"queue": BULK_QUEUE},
            "webhooks.deliver": {"queue": WEBHOOK_QUEUE},
            "maintenance.*": {"queue": MAINTENANCE_QUEUE},
        },
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {
                "task": "maintenance.reconcile",
                "schedule": settings.reconcile_interval_seconds,
            },
            "sweep-webhooks": {
                "task": "maintenance.sweep_webhooks",
                "schedule": settings.webhook_sweep_interval_seconds,
            },
        },
    )
    from worker import tasks

    tasks.process_single.flush_every = settings.single_flush_every
    tasks.process_single.flush_interval = settings.single_flush_interval
    return app


def settings() -> Settings:
    if not _settings:
        raise RuntimeError("the Celery app was not configured")
    return _settings[0]


def runtime() -> Runtime:
    return for_process(settings())
