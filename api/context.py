"""What handlers read: the process runtime on the app, the tenant on the request."""

from __future__ import annotations

import os
import threading

from flask import Flask, current_app, g

from worker.runtime import Runtime
from worker.settings import Settings
from worker.store.connection import Store


def settings() -> Settings:
    return settings_of(current_app)


_RUNTIME = "assistant_ingest.runtime"
_building = threading.Lock()


def runtime() -> Runtime:
    return runtime_of(current_app)


def runtime_of(app: Flask) -> Runtime:
    """The app's runtime (store, Redis, sender), built on first use in the process
    that serves: pymongo's and redis-py's clients must not cross a fork, and
    gunicorn may fork after the app is made."""
    held: tuple[int, Runtime] | None = app.extensions.get(_RUNTIME)
    if held is None or held[0] != os.getpid():
        with _building:
            held = app.extensions.get(_RUNTIME)
            if held is None or held[0] != os.getpid():
                held = (os.getpid(), Runtime.build(settings_of(app), edge=True))
                app.extensions[_RUNTIME] = held
    return held[1]


def close(app: Flask) -> None:
    """Let go of what the app opened in this process: the finished-job listener,
    the store, Redis and the sender."""
    listener = app.extensions.pop("assistant_ingest.listener", None)
    if listener is not None:
        listener.close()
    held: tuple[int, Runtime] | None = app.extensions.pop(_RUNTIME, None)
    if held is not None and held[0] == os.getpid():
        held[1].close()


def end_waits(app: Flask) -> None:
    """The process is stopping: requests held by `Prefer: wait` answer now."""
    listener = app.extensions.get("assistant_ingest.listener")
    if listener is not None:
        listener.end_waits()


def settings_of(app: Flask) -> Settings:
    value: Settings = app.extensions["assistant_ingest.settings"]
    return value


def store() -> Store:
    return runtime().store


def tenant() -> str:
    value: str = g.tenant
    return value


def request_id() -> str:
    value: str = g.request_id
    return value
