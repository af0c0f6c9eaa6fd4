"""The Celery app of the workers, beat and Flower: `celery -A worker.celery_app ...`.

Its configuration is read from the environment (the same settings as every
entry point) when Celery first needs it, never at import; the tasks module
is loaded by the worker itself, so importing this opens nothing.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from worker.runtime import Runtime, for_process
from worker.settings import Settings

app = Celery("assistant_ingest", include=["worker.tasks"])
app.config_from_object("worker.celeryconfig")


@cache
def settings() -> Settings:
    return Settings()


def runtime() -> Runtime:
    """This worker process's runtime, made after the pool forked it."""
    return for_process(settings())
