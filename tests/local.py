"""The in-process tier: the edge built by `create_app` and driven through Flask's
test client, and the worker's services run in this process on what is queued.

The servers stay real (Valkey and SecantusDB, over sockets): only gunicorn and
Celery's processes are left out, so a test costs milliseconds, not a deployment.
Messages are read from the same Redis lists Celery's workers consume, and each
is handed to the service its task would call.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from api.context import close, runtime_of
from tests.stack import Calls
from worker.queueing import routes
from worker.runtime import Runtime
from worker.services import delivery, provisioning, reconciler
from worker.settings import Settings
from worker.store import tenants
from worker.store.connection import Store
from worker.store.indexes import ensure_indexes

log = logging.getLogger(__name__)

# What each task does, as worker/tasks.py has it.
SERVICES: dict[str, Callable[[Runtime, Any], None]] = {
    routes.PROCESS_SINGLE: lambda rt, ids: (
        provisioning.process(rt, [ids] if isinstance(ids, str) else list(ids), singles=True)
        and None
    ),
    routes.PROCESS_CHUNK: lambda rt, unit_id: provisioning.process(rt, [unit_id]) and None,
    routes.PROCESS_TURN: lambda rt, _: provisioning.take_turn(rt),
    routes.DELIVER: delivery.attempt,
    routes.RECONCILE: lambda rt, _: reconciler.reconcile(rt),
    routes.SWEEP_WEBHOOKS: lambda rt, _: reconciler.sweep_webhooks(rt),
}


# A worker of every queue but the bulk one: with EXPRESS_BATCH_LINES=0 a batch
# stays in progress (a small one would otherwise go to the single queue).
NO_BULK = (routes.SINGLE_QUEUE, routes.WEBHOOK_QUEUE, routes.MAINTENANCE_QUEUE)


class Worker:
    """The worker's services, run here on the deployment's queued messages."""

    def __init__(self, rt: Runtime, queues: tuple[str, ...] = routes.ALL_QUEUES) -> None:
        self.rt = rt
        # In the order a worker's BRPOP names them: each lane, every queue.
        keys = [routes.queue_keys(rt.settings.redis_prefix, queue) for queue in queues]
        self._queues = [by_queue[lane] for lane in range(len(keys[0])) for by_queue in keys]

    def run_one(self, block: float = 0) -> bool:
        """Run the next queued message (the oldest of the first lane that has one);
        False when none came.
        Safe side by side, as worker processes are: the services are written so."""
        popped = (
            self.rt.redis.brpop(self._queues, timeout=block)
            if block
            else next(
                (found for queue in self._queues if (found := self.rt.redis.rpop(queue))),
                None,
            )
        )
        if not popped:
            return False
        raw = popped[1] if isinstance(popped, (list, tuple)) else popped
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        SERVICES[message["headers"]["task"]](self.rt, args[0] if args else None)
        return True

    def run_queued(self) -> int:
        """Run what is queued, and what that queues, until nothing is; returns how many."""
        done = 0
        while self.run_one():
            done += 1
        return done

    @contextmanager
    def running(self, threads: int = 2) -> Iterator[None]:
        """Serve the queues from threads, as a worker's pool would (two, as the
        tests' worker processes), and sweep as beat would, so that a request that
        waits (`Prefer: wait`) gets its answer and retries come due."""
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    self.run_one(block=0.1)
                except Exception:  # as a worker does: log it, take the next message
                    log.exception("an in-process task failed")

        def beat() -> None:
            settings, reconciled = self.rt.settings, time.monotonic()
            while not stop.wait(settings.webhook_sweep_interval_seconds):
                reconciler.sweep_webhooks(self.rt)
                if time.monotonic() - reconciled >= settings.reconcile_interval_seconds:
                    reconciler.reconcile(self.rt)
                    reconciled = time.monotonic()

        started = [threading.Thread(target=serve, daemon=True) for _ in range(threads)]
        started.append(threading.Thread(target=beat, daemon=True))
        for thread in started:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in started:
                thread.join(30)


class _Parts(io.RawIOBase):
    """A body given as an iterator of parts, read as a server reads a chunked one."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._held = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._held:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._held = part
        size = min(len(buffer), len(self._held))
        buffer[:size], self._held = self._held[:size], self._held[size:]
        return size


@dataclass
class Answer:
    """A test client's response read as `requests.Response` is, so a test reads
    the same in both tiers."""

    raw: TestResponse

    @property
    def status_code(self) -> int:
        return self.raw.status_code

    @property
    def headers(self) -> Any:
        return self.raw.headers

    @property
    def content(self) -> bytes:
        return self.raw.get_data()

    @property
    def text(self) -> str:
        return self.raw.get_data(as_text=True)

    def json(self) -> Any:
        return json.loads(self.raw.get_data())

    def iter_lines(self) -> Iterator[bytes]:
        yield from self.raw.get_data().splitlines()


@dataclass
class Local:
    """A deployment in this process: its own database and Redis prefix on the
    session's servers."""

    base: Settings
    # The queues its worker serves (a deployment without a bulk worker leaves chunks queued).
    queues: tuple[str, ...] = routes.ALL_QUEUES
    name: str = field(default_factory=lambda: "l" + uuid.uuid4().hex[:10])

    @cached_property
    def settings(self) -> Settings:
        uri = self.base.mongodb_uri.rsplit("/", 1)[0] + "/" + self.name
        return self.base.model_copy(update={"mongodb_uri": uri, "redis_prefix": self.name})

    @cached_property
    def app(self) -> Flask:
        app = create_app(self.settings)
        app.testing = True
        ensure_indexes(runtime_of(app).store)
        return app

    @property
    def rt(self) -> Runtime:
        return runtime_of(self.app)

    @property
    def db(self) -> Store:
        return self.rt.store

    @cached_property
    def worker(self) -> Worker:
        return Worker(self.rt, self.queues)

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def new_tenant(self, name: str | None = None, webhook_url: str | None = None) -> LocalTenant:
        created = tenants.create_key(self.db, name or "tenant-" + uuid.uuid4().hex[:8], webhook_url)
        return LocalTenant(self, created.tenant, created.api_key, created.webhook_secret)

    def close(self) -> None:
        if "app" in self.__dict__:
            close(self.app)


@contextmanager
def running_local(
    settings: Settings, queues: tuple[str, ...] = routes.ALL_QUEUES
) -> Iterator[Local]:
    """A deployment in this process whose worker serves its queues meanwhile."""
    deployment = Local(settings, queues)
    try:
        with deployment.worker.running():
            yield deployment
    finally:
        deployment.close()


@dataclass
class LocalTenant(Calls):
    local: Local
    name: str
    api_key: str
    webhook_secret: str

    @property
    def stack(self) -> Local:
        return self.local

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        # Header octets reach a WSGI app as Latin-1 text (PEP 3333), as gunicorn passes them.
        headers = {
            name: value.decode("latin-1") if isinstance(value, bytes) else value
            for name, value in headers.items()
        }
        for unused in ("timeout", "stream"):
            kwargs.pop(unused, None)
        if "params" in kwargs:
            kwargs["query_string"] = kwargs.pop("params")
        if isinstance(kwargs.get("data"), Iterator):
            # No Content-Length: gunicorn hands such a body on as terminated input.
            kwargs["environ_overrides"] = {
                "wsgi.input": io.BufferedReader(_Parts(kwargs.pop("data"))),
                "wsgi.input_terminated": True,
                "CONTENT_LENGTH": "",
            }
            headers["Transfer-Encoding"] = "chunked"
        return Answer(self.local.client().open(path, method=method, headers=headers, **kwargs))
