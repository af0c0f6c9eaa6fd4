"""Real processes for the tests: the edge under gunicorn and Celery workers,
started through the `assistant-ingest` CLI against real servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import requests

from cli.embedded import Server, free_port, wait_for_port
from worker.settings import Settings
from worker.store import tenants
from worker.store.connection import Store

# Short timings so reconciling, leases and webhook retries happen within a test.
FAST = {
    "RECONCILE_INTERVAL_SECONDS": "1",
    "RESEND_AFTER_SECONDS": "3",
    "LEASE_SECONDS": "6",
    "WEBHOOK_SWEEP_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_SCHEDULE": "0,1,1,2",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "AUTH_CACHE_SECONDS": "1",
    # Workers announce " ready." at INFO, which the tests wait for.
    "LOG_LEVEL": "INFO",
}


@dataclass
class Servers:
    mongo: Server
    valkey: Server

    @property
    def mongo_base(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey.port}/0"

    def settings(self, **overrides: str) -> Settings:
        """Settings for a deployment on these servers, with the tests' short timings."""
        env = {**FAST, **overrides}
        fields = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
        uri = f"{self.mongo_base}/assistant_ingest"
        return Settings(**{**fields, "mongodb_uri": uri, "redis_url": self.redis_url})


@dataclass
class Stack:
    """One deployment: its own database and Redis prefix on the shared servers."""

    servers: Servers
    logs: Path
    overrides: dict[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # gunicorn workers of the edge: one serves a test's requests (gevent), and each
    # costs a start of the app; the metrics tests run two, to sum over processes.
    edge_workers: int = 1
    log_starts: dict[str, int] = field(default_factory=dict)
    # Its processes' logs are named after this (the deployment's name if empty):
    # two stacks on one deployment (a second edge) keep logs of their own.
    logs_as: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **FAST,
            "MONGODB_URI": f"{self.servers.mongo_base}/{self.name}",
            "REDIS_URL": self.servers.redis_url,
            "REDIS_PREFIX": self.name,
            **self.overrides,
        }

    @property
    def settings(self) -> Settings:
        env = self.env
        keys = set(Settings.model_fields)
        return Settings(**{k.lower(): v for k, v in env.items() if k.lower() in keys})  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store(self) -> Store:
        """A connection of its own (closed by the caller)."""
        return Store.connect(self.settings, timeout_ms=5000)

    @cached_property
    def db(self) -> Store:
        """The deployment's store, for tests to read and arrange; closed at stop."""
        return self.store()

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A process of the deployment; `env` adds what this process alone is given
        (as each service of a compose file has its own environment)."""
        path = self.log_path(name)
        # A process started again under a name appends to its log: what it
        # writes itself starts here.
        self.log_starts[name] = path.stat().st_size if path.exists() else 0
        with path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", *args],
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, to kill pool children too
            )
        self.processes[name] = process
        return process

    def start_api(self, wait: bool = True, env: dict[str, str] | None = None) -> None:
        process = self.spawn(
            "api",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.edge_workers),
            env=env,
        )
        if wait:
            wait_for_port(self.port, process, timeout=60)

    def start_worker(
        self,
        name: str = "worker",
        queues: str = "single,bulk,webhooks,maintenance",
        beat: bool = True,
        concurrency: int = 2,
        pool: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        args = [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}-{self.name}@%h",
        ]
        if pool is not None:
            args += ["--pool", pool]
        if beat:
            args.append("--beat")
        process = self.spawn(name, *args, env=env)
        if wait:
            self.wait_worker_ready(name)
        return process

    def start(self, *workers: dict[str, Any], api_env: dict[str, str] | None = None) -> None:
        """The edge and the given workers (the default one if none), started side by
        side: a deployment is ready in the time of its slowest process."""
        self.start_api(wait=False, env=api_env)
        for worker in workers or ({},):
            self.start_worker(**worker, wait=False)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Every process started with `wait=False` serving: they start side by side."""
        for name, process in self.processes.items():
            if name == "api":
                wait_for_port(self.port, process, timeout=60)
            else:
                self.wait_worker_ready(name)

    def log_path(self, name: str) -> Path:
        return self.logs / f"{self.logs_as or self.name}-{name}.log"

    def output(self, name: str) -> bytes:
        """What the process last started under `name` has written to its log."""
        with self.log_path(name).open("rb") as log:
            log.seek(self.log_starts.get(name, 0))
            return log.read()

    def wait_worker_ready(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.output(name):
                return
            process = self.processes[name]
            if process.poll() is not None:
                log = self.output(name)[-2000:].decode(errors="replace")
                raise RuntimeError(f"worker {name} exited: {log}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {name} not ready in {timeout} s")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and its whole group (pool children included)."""
        process = self.processes.pop(name)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop(self, grace: float = 10, names: Iterable[str] | None = None) -> None:
        """SIGTERM to every process group at once, then SIGKILL to what is left
        after `grace` seconds (the stores keep what they were told). With `names`,
        those processes alone, and the deployment goes on."""
        chosen = list(self.processes) if names is None else list(names)
        running = [self.processes.pop(name) for name in chosen]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            # The group: what the process left behind (pool children) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if names is None and "db" in self.__dict__:
            self.__dict__.pop("db").close()

    def new_tenant(self, name: str | None = None, webhook_url: str | None = None) -> Tenant:
        created = tenants.create_key(self.db, name or "tenant-" + uuid.uuid4().hex[:8], webhook_url)
        return Tenant(self, created.tenant, created.api_key, created.webhook_secret)


# A webhook delivery's statuses once it is over.
FINAL_DELIVERY = ("delivered", "failed")


class Calls:
    """What a test does as a tenant, over its `request` (HTTP, or Flask's test client)."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def create(self, body: Any, **headers: str) -> Any:
        return self.request("POST", "/v1/assistants", json=body, headers=headers)

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll until the job finishes (no timing is asserted, only the outcome)."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.request(
                "GET", f"/v1/jobs/{job_id}", headers={"Prefer": "wait=10"}
            ).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not finish: {job}")

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        """The webhook delivery as `GET /v1/webhook_deliveries/{id}` answers it (a 200)."""
        response = self.request("GET", f"/v1/webhook_deliveries/{delivery_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_delivery(self, delivery_id: str, *statuses: str) -> dict[str, Any]:
        """Poll until the delivery is in one of `statuses` (by default either final
        one, delivered or failed); returns it."""
        wanted = statuses or FINAL_DELIVERY
        found: dict[str, Any] = wait_until(
            lambda: (d := self.delivery(delivery_id))["status"] in wanted and d
        )
        return found


@dataclass
class Tenant(Calls):
    stack: Stack
    name: str
    api_key: str
    webhook_secret: str
    session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 90)
        return self.session.request(method, self.stack.url + path, headers=headers, **kwargs)


@contextmanager
def running_stack(servers: Servers, logs: Path, **overrides: str) -> Iterator[Stack]:
    stack = Stack(servers, logs, overrides)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def wait_until(predicate: Any, timeout: float = 60, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
