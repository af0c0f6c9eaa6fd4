"""`/metrics` of the edge and the worker's metrics port: Prometheus text, summed
over every process of each (gunicorn workers, Celery's pool)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import metrics
from cli.embedded import free_port, wait_for_port
from tests.in_process.test_batches import submit
from tests.stack import Servers, Stack, Tenant, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Observed:
    """Metrics of one deployment, its edge's and its worker's, each on its own
    METRICS_PORT as docker-compose lays them out."""

    def __init__(self, stack: Stack, edge_port: int, worker_port: int) -> None:
        self.stack = stack
        self.edge_port = edge_port
        self.worker_port = worker_port

    def edge(self) -> Samples:
        return scrape(f"http://127.0.0.1:{self.edge_port}/metrics")

    def worker(self) -> Samples:
        return scrape(f"http://127.0.0.1:{self.worker_port}/metrics")


@pytest.fixture(scope="module")
def observed(servers: Servers, logs_dir: Path) -> Iterator[Observed]:
    edge_port, worker_port = free_port(), free_port()
    # Two gunicorn workers: the edge's /metrics sums over both, as deployed.
    stack = Stack(servers, logs_dir, edge_workers=2)
    try:
        stack.start(
            {"env": {"METRICS_PORT": str(worker_port)}},
            api_env={"METRICS_PORT": str(edge_port)},
        )
        # Ready is the API's port; gunicorn binds the metrics port after it (and
        # tries again for a few seconds while it is in use).
        wait_for_port(edge_port, stack.processes["api"], timeout=60)
        yield Observed(stack, edge_port, worker_port)
    finally:
        stack.stop()


@pytest.fixture
def client(observed: Observed) -> Tenant:
    return observed.stack.new_tenant()


def test_edge_counts_requests_by_route_template_and_status(
    observed: Observed, client: Tenant
) -> None:
    name = "assistant_ingest_http_requests_total"
    labels = {"method": "GET", "route": "/v1/assistants/<assistant_id>", "status": "404"}
    before = value(observed.edge(), name, **labels)
    for index in range(3):
        assert client.request("GET", f"/v1/assistants/asst_missing{index}").status_code == 404
    after = observed.edge()
    # Requests land on either gunicorn worker; the scrape sums them all.
    assert value(after, name, **labels) == before + 3
    count = "assistant_ingest_http_request_duration_seconds_count"
    assert value(after, count, method="GET", route="/v1/assistants/<assistant_id>") >= 3


def test_made_up_methods_are_counted_as_one_value(observed: Observed, client: Tenant) -> None:
    name = "assistant_ingest_http_requests_total"
    before = observed.edge()
    made_up = [f"M{uuid.uuid4().hex[:8].upper()}" for _ in range(40)]
    for verb in made_up:
        assert client.request(verb, "/v1/models").status_code in (400, 405)
    after = observed.edge()
    methods = {dict(labels)["method"] for (series, labels) in after if series == name}
    assert methods <= set(metrics.METHODS) | {"other"}
    counted = sum(
        v
        for (series, labels), v in after.items()
        if series == name and ("method", "other") in labels
    )
    earlier = sum(
        v
        for (series, labels), v in before.items()
        if series == name and ("method", "other") in labels
    )
    assert counted == earlier + len(made_up)


WORKER_SERIES = (
    "assistant_ingest_jobs_finished_total",
    "assistant_ingest_job_latency_seconds",
    "assistant_ingest_batch_chunks_processed_total",
    "assistant_ingest_webhook_attempt",
)


def test_the_edge_shows_no_worker_series_it_does_not_count(
    observed: Observed, client: Tenant
) -> None:
    """Edge and worker keep their own folders here (as on separate machines):
    the worker's series are on its METRICS_PORT, not shown as zeros at the edge."""
    assert client.create({"model": "m"}, Prefer="wait=30").status_code == 200
    edge = {series for series, _ in observed.edge()}
    assert not [s for s in edge if s.startswith(WORKER_SERIES)]
    assert "assistant_ingest_http_requests_total" in edge
    # The answer may come a moment before the worker counts the job.
    worker = wait_until(
        lambda: (
            found
            if "assistant_ingest_jobs_finished_total"
            in (found := {series for series, _ in observed.worker()})
            else None
        )
    )
    assert "assistant_ingest_batch_chunks_processed_total" in worker


def test_worker_counts_jobs_by_outcome_with_their_latency(
    observed: Observed, client: Tenant
) -> None:
    before = observed.worker()
    assert client.create({"model": "m"}, Prefer="wait=30").status_code == 200
    assert client.create({"model": "m", "name": "x"}, Prefer="wait=30").status_code == 200
    assert client.create({"name": 5}, Prefer="wait=30").status_code == 422
    jobs = "assistant_ingest_jobs_finished_total"
    latency = "assistant_ingest_job_latency_seconds_count"

    def counted() -> dict[str, float]:
        # The answer may come a moment before the worker counts the job.
        after = observed.worker()
        found = {
            outcome: value(after, jobs, kind="single", outcome=outcome)
            - value(before, jobs, kind="single", outcome=outcome)
            for outcome in ("succeeded", "failed")
        }
        found["latency"] = value(after, latency, kind="single") - value(
            before, latency, kind="single"
        )
        return found

    expected = {"succeeded": 2, "failed": 1, "latency": 3}
    wait_until(lambda: counted() == expected, timeout=10)
    assert counted() == expected


def test_batch_throughput_is_counted(observed: Observed, client: Tenant) -> None:
    before = observed.worker()
    lines = "".join(f'{{"custom_id": "c{i}", "body": {{"model": "m"}}}}\n' for i in range(3))
    response = submit(client, lines.encode())
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    def completed() -> bool:
        batch = client.request("GET", f"/v1/batches/{batch_id}").json()
        return bool(batch["status"] == "completed")

    wait_until(completed)
    jobs = "assistant_ingest_jobs_finished_total"
    labels = {"kind": "batch", "outcome": "succeeded"}
    expected = value(before, jobs, **labels) + 3
    # The worker counts a chunk's jobs just after recording them, and recording
    # the last one completes the batch: the count follows the status.
    wait_until(lambda: value(observed.worker(), jobs, **labels) >= expected, timeout=30)
    after = observed.worker()
    assert value(after, jobs, **labels) == expected
    chunks = "assistant_ingest_batch_chunks_processed_total"
    assert value(after, chunks) > value(before, chunks)


def test_queue_depth_is_read_from_redis(observed: Observed, client: Tenant) -> None:
    stack = observed.stack
    stack.kill("worker")  # nothing consumes while it is down
    try:
        for _ in range(3):
            assert client.create({"model": "m"}).status_code == 202
        depth = observed.edge()
        assert value(depth, "assistant_ingest_queue_depth", queue="single") == 3
        for queue in ("bulk", "webhooks", "maintenance"):
            assert ("assistant_ingest_queue_depth", frozenset({("queue", queue)})) in depth
    finally:
        stack.start_worker(env={"METRICS_PORT": str(observed.worker_port)})
    wait_until(lambda: value(observed.edge(), "assistant_ingest_queue_depth", queue="single") == 0)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_attempts_are_counted_by_result(
    observed: Observed, client: Tenant, receiver: str
) -> None:
    name = "assistant_ingest_webhook_attempts_total"
    before = observed.worker()
    created = client.create({"model": "m"}, **{"Callback-URL": receiver})
    assert created.status_code == 202
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    assert client.create({"model": "m"}, **{"Callback-URL": closed}).status_code == 202
    for result in ("delivered", "retrying"):
        wait_until(
            lambda result=result: (
                value(observed.worker(), name, result=result) > value(before, name, result=result)
            )
        )


def test_the_api_command_removes_its_metrics_folder_when_it_stops(
    servers: Servers, logs_dir: Path, tmp_path: Path
) -> None:
    # The edge alone: a worker without a metrics port makes no such folder.
    stack = Stack(servers, logs_dir, {"TMPDIR": str(tmp_path)})
    try:
        stack.start_api()
        tenant = stack.new_tenant()
        assert tenant.request("GET", "/v1/models").status_code == 200
        (folder,) = tmp_path.glob("assistant-ingest-metrics-*")
        assert any(folder.iterdir())  # the processes' sample files
    finally:
        stack.stop()
    assert not list(tmp_path.glob("assistant-ingest-metrics-*"))
