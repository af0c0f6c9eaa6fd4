"""The objects the API answers with, as pydantic models.

The request body and the assistant object are the worker's own
(`worker.schema`); these describe the rest of API.md. They are the source of
the OpenAPI document, and the models list is serialised through them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from worker.domain.schema import Assistant

Unix = Annotated[int, Field(description="Unix seconds")]
CustomId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class ErrorMessage(BaseModel):
    """Every error but 422: `{"detail": "message"}`."""

    detail: str


class ValidationIssue(BaseModel):
    """One entry of a 422 `detail`, as FastAPI reports a pydantic error."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | SkipJsonSchema[None] = None


class ValidationErrors(BaseModel):
    """A 422 answer: every problem of the request at once."""

    detail: list[ValidationIssue]


class JobResult(BaseModel):
    status_code: Literal[200, 422, 500]
    body: Assistant | ValidationErrors | ErrorMessage


class Job(BaseModel):
    """The job of one create request."""

    id: str
    object: Literal["assistant.job"]
    status: Literal["queued", "in_progress", "succeeded", "failed", "cancelled"]
    created_at: Unix
    started_at: Unix | None
    completed_at: Unix | None
    attempts: int
    batch_id: str | None
    custom_id: str | None
    callback_url: str | None
    result: JobResult | None


class RequestCounts(BaseModel):
    total: int
    completed: int = Field(description="requests with a 200 result")
    failed: int = Field(description="requests with a 422 or 500 result")
    cancelled: int = Field(description="requests cancelled before they started")


class Batch(BaseModel):
    id: str
    object: Literal["batch"]
    status: Literal["in_progress", "completed", "cancelling", "cancelled"]
    created_at: Unix
    in_progress_at: Unix | None
    completed_at: Unix | None
    cancelling_at: Unix | None
    cancelled_at: Unix | None
    request_counts: RequestCounts
    callback_url: str | None
    metadata: dict[str, Any]


class BatchRequest(BaseModel):
    """One request of a batch; an NDJSON line has the same shape (OpenAI Batch
    lines, with `method` and `url`, are accepted too)."""

    custom_id: CustomId | SkipJsonSchema[None] = Field(
        None, description="unique in the batch; the 0-based line number when absent"
    )
    method: Literal["POST"] | SkipJsonSchema[None] = None
    url: Literal["/v1/assistants"] | SkipJsonSchema[None] = None
    body: dict[str, Any] = Field(
        description="a Create Assistant request; its fields are checked by the worker, "
        "and a request that fails them gets a 422 result like any other job"
    )


class BatchCreate(BaseModel):
    """The JSON form of `POST /v1/batches`."""

    requests: Annotated[list[BatchRequest], Field(min_length=1, max_length=50_000)]
    metadata: dict[str, Any] | SkipJsonSchema[None] = None


class BatchResultLine(BaseModel):
    """One line of `GET /v1/batches/{batch_id}/results` (NDJSON)."""

    custom_id: str
    job_id: str
    status_code: Literal[200, 422, 500] | None
    body: Assistant | ValidationErrors | ErrorMessage | None
    status: Literal["cancelled"] | SkipJsonSchema[None] = None


class AssistantDeleted(BaseModel):
    id: str
    object: Literal["assistant.deleted"]
    deleted: Literal[True]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: Unix
    owned_by: str


class ListPage(BaseModel):
    object: Literal["list"] = "list"
    first_id: str | None
    last_id: str | None
    has_more: bool


class AssistantList(ListPage):
    data: list[Assistant]


class JobList(ListPage):
    data: list[Job]


class BatchList(ListPage):
    data: list[Batch]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class WebhookEndpoint(BaseModel):
    """The tenant's webhook endpoint and its state. While it fails, one attempt at a
    time probes it, spaced by the retry schedule, and other deliveries to it wait;
    after failing for `WEBHOOK_DISABLE_AFTER_SECONDS` (5 days) it is disabled and
    deliveries to it fail at once, until `PUT` or `POST .../enable`."""

    object: Literal["webhook_endpoint"]
    url: str
    status: Literal["enabled", "disabled"]
    failing_since: Unix | None = Field(description="first failure since its last success")
    disabled_at: Unix | None


class WebhookEndpointDeleted(BaseModel):
    object: Literal["webhook_endpoint.deleted"]
    deleted: Literal[True]


class WebhookSecret(BaseModel):
    """A rotated secret; until `previous_expires_at` the old ones sign too
    (all signatures space-separated in `webhook-signature`)."""

    object: Literal["webhook_secret"]
    secret: str = Field(description="the new secret, `whsec_...`; shown only this once")
    previous_expires_at: Unix | None


class DeliveryAttempt(BaseModel):
    at: Unix
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDelivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    event_type: Literal["job.succeeded", "job.failed", "batch.completed", "batch.cancelled"]
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[DeliveryAttempt]
    next_attempt_at: Unix | None = Field(description="set while pending")
    created_at: Unix


class WebhookDeliveryList(ListPage):
    data: list[WebhookDelivery]


class WebhookEvent(BaseModel):
    """The body POSTed to a callback URL, signed per Standard Webhooks."""

    type: Literal["job.succeeded", "job.failed", "batch.completed", "batch.cancelled"]
    timestamp: str = Field(description="ISO 8601")
    data: Job | Batch


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


# Query strings and headers the client may send, as models of their own so the
# document's parameters come from the same declarations as everything else.


class AssistantListQuery(BaseModel):
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: Cursor | SkipJsonSchema[None] = Field(None, description="an assistant id")
    before: Cursor | SkipJsonSchema[None] = Field(None, description="an assistant id")


class JobListQuery(BaseModel):
    batch_id: Cursor | SkipJsonSchema[None] = None
    status: (
        Literal["queued", "in_progress", "succeeded", "failed", "cancelled"] | SkipJsonSchema[None]
    ) = None
    limit: int = Field(20, ge=1, le=100)
    after: Cursor | SkipJsonSchema[None] = Field(None, description="a job id")


class BatchListQuery(BaseModel):
    limit: int = Field(20, ge=1, le=100)
    after: Cursor | SkipJsonSchema[None] = Field(None, description="a batch id")


class BatchCreateQuery(BaseModel):
    job_events: Literal["true", "false"] = Field(
        "false", description="also send job.succeeded / job.failed for the batch's jobs"
    )


class BatchResultsQuery(BaseModel):
    status: Literal["succeeded", "failed", "cancelled"] | SkipJsonSchema[None] = None


class DeliveryListQuery(BaseModel):
    status: Literal["pending", "delivered", "failed"] | SkipJsonSchema[None] = None
    limit: int = Field(20, ge=1, le=100)
    after: Cursor | SkipJsonSchema[None] = Field(None, description="a delivery id")


class SubmitHeaders(BaseModel):
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=255)] | (SkipJsonSchema[None])
    ) = Field(
        None,
        alias="Idempotency-Key",
        description="the same key and body within the idempotency window return the "
        "original job with `Idempotent-Replayed: true`; another body is a 409",
    )
    callback_url: Annotated[str, StringConstraints(max_length=2048)] | SkipJsonSchema[None] = Field(
        None,
        alias="Callback-URL",
        description="where the completion event is POSTed; an absolute http(s) URL "
        'to public addresses, else 422 at ["header", "callback-url"]',
    )


class WaitHeaders(BaseModel):
    prefer: str | SkipJsonSchema[None] = Field(
        None,
        alias="Prefer",
        description="RFC 7240: `wait=N` holds the answer up to N seconds (at most 60) "
        "until the job finishes; `respond-async` answers 202 at once",
        examples=["wait=10", "respond-async, wait=5", "respond-async"],
    )


class TraceHeaders(BaseModel):
    request_id: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
        | (SkipJsonSchema[None])
    ) = Field(
        None,
        alias="X-Request-ID",
        description="echoed on the answer and logged with every line of the request and "
        "of its jobs; one is made when absent or malformed",
    )
