"""What handlers read: the process runtime on the app, the tenant on the request."""

from __future__ import annotations

from flask import current_app, g

from worker.runtime import Runtime, for_process
from worker.settings import Settings
from worker.store.connection import Store


def settings() -> Settings:
    value: Settings = current_app.extensions["assistant_ingest.settings"]
    return value


def runtime() -> Runtime:
    # Made on first use in each process, after gunicorn forked it.
    return for_process(settings())


def store() -> Store:
    return runtime().store


def tenant() -> str:
    value: str = g.tenant
    return value


def request_id() -> str:
    value: str = g.request_id
    return value
