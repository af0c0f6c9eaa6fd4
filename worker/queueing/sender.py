"""Sending work by task name: senders never import the tasks or the worker's app."""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.queueing.config import celery_config
from worker.settings import Settings


class Sender:
    """A Celery client of its own, for processes that send and never consume.

    Made after fork, like every connection: kombu's producer pool is per process.
    """

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("assistant_ingest", set_as_current=False)
        self._app.conf.update(celery_config(settings))

    def send(self, task: str, arg: str | list[str], **options: Any) -> None:
        """Queue `task(arg)`; its queue comes from the routes. Raises if the broker is down."""
        # Celery pushes a message straight onto its queue's Redis list (the default
        # exchange, by the queue's name): declaring the queue first adds nothing
        # but kombu's check on every send, about a tenth of a send's time. The
        # workers declare the queues they consume.
        self._app.send_task(task, args=(arg,), declare=[], **options)

    def close(self) -> None:
        self._app.close()
