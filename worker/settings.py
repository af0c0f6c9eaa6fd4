"""Settings: one object, built once by an entry point and passed down."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    mongodb_uri: str = "mongodb://127.0.0.1:27017/assistant_ingest"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key and channel, so several deployments (or tests)
    # can share one Redis.
    redis_prefix: str = "ai"

    max_body_bytes: int = 1024 * 1024
    max_batch_bytes: int = 100 * 1024 * 1024
    max_batch_requests: int = 50_000
    # Requests per chunk document and task; a chunk also closes early once its
    # bodies pass chunk_max_bytes, which keeps every chunk far below BSON's 16 MiB.
    chunk_size: int = 500
    chunk_max_bytes: int = 2 * 1024 * 1024
    # Open batch work a tenant may hold: a new batch is refused (429) while the
    # tenant's chunks waiting for a bulk worker hold this many lines or more
    # (each chunk counted as chunk_size lines). 0: no quota.
    max_queued_lines_per_tenant: int = 1_000_000
    # A batch of at most this many lines (one chunk) from a tenant with no chunk
    # in line is processed by the single-create workers, as that many single
    # creates would be (one such batch a second per tenant); 0: never.
    express_batch_lines: int = 50

    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # What `GET /v1/models` tells of each model: its owner and creation time.
    models_owned_by: str = "system"
    models_created: int = 0
    webhook_allow_private: bool = False

    idempotency_window_seconds: int = 24 * 3600
    retention_days: int = 30

    # Leases and reconciliation.
    lease_seconds: int = 120
    max_attempts: int = 5
    resend_after_seconds: int = 30
    reconcile_interval_seconds: float = 10.0
    webhook_sweep_interval_seconds: float = 1.0

    worker_concurrency: int = 2
    # Threads of a worker that takes only webhook deliveries: each attempt waits
    # on the network for up to its deadline, so one process holds many.
    webhook_worker_concurrency: int = 32

    # Webhooks: seconds to wait before each attempt; the first is sent at once.
    webhook_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_timeout_seconds: float = 10.0
    webhook_max_retry_after_seconds: int = 3600
    webhook_secret_overlap_seconds: int = 24 * 3600
    # Attempts in flight at once to one endpoint (per tenant and origin), across
    # every worker, so a slow receiver cannot hold every delivery slot; 0: no cap.
    webhook_endpoint_concurrency: int = 4
    # Attempts in flight at once for one tenant, whatever the origins, across
    # every worker: a tenant whose callbacks name many hanging origins holds at
    # most this many webhook threads (each for up to webhook_timeout_seconds),
    # so keep it well below webhook_worker_concurrency; 0: no cap.
    webhook_tenant_concurrency: int = 8
    # Undelivered (pending) deliveries a tenant may have before requests that
    # would add more are refused with 429; 0: no quota.
    webhook_tenant_pending_max: int = 10_000
    # Failed deliveries `POST /v1/webhook_deliveries/recover` sends again per
    # second (they come due one after another), so a receiver back from an
    # outage is not sent a whole outage's events at once.
    webhook_recover_per_second: float = 10.0
    # How long an edge process trusts a tenant's count of pending deliveries.
    webhook_quota_cache_seconds: float = 2.0
    # A worker given the webhooks queue beside others runs the deliveries in a
    # second worker process of their own (a threads pool) that it supervises, so
    # a hanging receiver never holds the processes that serve creates. False
    # runs every queue in one pool (then deliveries can delay creates).
    worker_webhooks_apart: bool = True
    # The tenant's endpoint is disabled once it has failed this long without a
    # success (Svix's five days).
    webhook_disable_after_seconds: float = 5 * 24 * 3600

    # Edge
    store_timeout_ms: int = 2000
    max_wait_seconds: int = 60
    # The wait applied to creates and modifies sent without a `Prefer` header
    # (0: answer 202 at once), so a client that knows nothing of jobs, such as
    # an unmodified OpenAI SDK, gets the assistant.
    default_wait_seconds: int = 0
    # How long an edge process trusts a key it has checked (a revoked key is
    # refused within this time); 0 checks every request against the store.
    auth_cache_seconds: float = 5.0
    # Per edge process: open connections from one client address (503 beyond),
    # and requests in flight with one API key (429 beyond).
    max_connections_per_client: int = 256
    max_requests_per_key: int = 512
    # A connection that sends nothing (or reads nothing) this long is dropped.
    read_timeout_seconds: float = 15.0
    # A request body must arrive within this many seconds of its first read,
    # plus one second for every body_min_bytes_per_second bytes received (a
    # minimum rate after the grace), else 408: a body trickled a byte at a time
    # cannot hold a connection and its greenlet for ever.
    body_timeout_seconds: float = 30.0
    body_min_bytes_per_second: int = 64 * 1024
    # Trusted proxies (addresses or networks, comma-separated; `*` trusts every
    # peer): their connections are not capped as one client, and a request
    # through them is counted for its real client, the rightmost
    # X-Forwarded-For entry that is not a trusted proxy. Empty: trust none.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Each store operation of the edge (a read, a write, waiting for a pooled
    # connection) ends within this many milliseconds, then a 503 with
    # Retry-After: a hung store never holds a request longer.
    store_deadline_ms: int = 5000
    # Store reads of result streams (a page of one chunk each) in flight at once per edge
    # process, so streams never hold the connections auth and creates need.
    stream_store_slots: int = 16
    # Per tenant and edge process: result streams and exports at once, and
    # batch uploads (dry runs included) at once; 429 with Retry-After beyond.
    max_streams_per_tenant: int = 32
    max_uploads_per_tenant: int = 16
    # A request with a body costs one rate-limit unit more for every this many
    # bytes of it past the first, so a 99 MiB upload is not one request's worth.
    rate_limit_bytes_per_unit: int = 64 * 1024
    rate_limit: str = "6000/minute"
    log_level: str = "INFO"

    # Operations: the port a worker serves Prometheus metrics on (0: none).
    metrics_port: int = 0

    # The console (/console): how long a sign-in lasts (the session is ended
    # sooner by signing out or when its API key is revoked); whether its cookie
    # is sent over HTTPS only (bin/dev turns it off: it serves plain HTTP on
    # loopback); and the secret its session cookies are signed with, which
    # every edge process must share: empty, one is made once and kept in Redis.
    console_session_seconds: int = 8 * 3600
    console_cookie_secure: bool = True
    console_secret: str = ""
    # The largest manifest the console's provisioning page takes: it is kept
    # in Redis between its plan and its apply (bigger ones: the CLI's `apply`).
    console_max_manifest_bytes: int = 8 * 1024 * 1024

    @field_validator("models", "webhook_schedule", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # Lists come from the environment as "a,b,c".
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            if entry != "*":
                ipaddress.ip_network(entry, strict=False)  # a ValueError names the entry
        return value

    @property
    def database_name(self) -> str:
        from pymongo.uri_parser import parse_uri

        return parse_uri(self.mongodb_uri).get("database") or "assistant_ingest"
