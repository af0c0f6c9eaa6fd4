"""What a scrape reads: every process's samples, and the queue depths read from Redis.

The edge and the workers both serve this; neither declares the other's
series here, so each shows only what its processes count (and, where they
share one PROMETHEUS_MULTIPROC_DIR, as under `assistant-ingest dev`, all of it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from worker.queueing.routes import ALL_QUEUES, queue_depths


class QueueDepth(Collector):
    """Messages waiting in each Celery queue, read from Redis at scrape time."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "assistant_ingest_queue_depth",
            "Messages waiting in each Celery queue (Redis LLEN).",
            labels=["queue"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            depths = queue_depths(self._redis, self._prefix, ALL_QUEUES)
        except Exception:
            logging.getLogger(__name__).warning("queue depth unavailable: Redis did not answer")
            return
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family


def registry(*extra: Collector) -> CollectorRegistry:
    """What a scrape reads: every process's samples (multi-process mode) or this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    else:
        combined = CollectorRegistry()
        combined.register(_Forward(REGISTRY))
    for collector in extra:
        combined.register(collector)
    return combined


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def serve(port: int, *extra: Collector) -> None:
    """Expose the metrics of this process and its children on `port` (a daemon thread)."""
    start_http_server(port, registry=registry(*extra))
