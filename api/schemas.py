"""The objects the API answers with, as pydantic models.

The request body and the assistant object are the worker's own
(`worker.schema`); these describe the rest of API.md. They are the source of
the OpenAPI document, and the models list is serialised through them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    with_config,
)
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from pydantic_core import PydanticKnownError
from typing_extensions import TypedDict

from worker.domain.schema import Assistant, AssistantCreate

Unix = Annotated[int, Field(description="Unix seconds")]
CustomId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def _ascii_digits(value: Any) -> Any:
    # Lax int parsing of a string takes "+5", "1_0", " 5" and "5.0"; a query
    # integer is plain ASCII digits, anything else pydantic's own int_parsing.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticKnownError("int_parsing")
    return value


QueryInt = Annotated[int, BeforeValidator(_ascii_digits)]


def detail_of(exc: ValidationError, *prefix: str | int) -> list[dict[str, Any]]:
    """A ValidationError as the entries of a 422 `detail`, as FastAPI answers it:
    pydantic's own entries, `loc` prefixed (with "query", "body", ...), no `url`."""
    entries: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        entry: dict[str, Any] = {**error, "loc": [*prefix, *error["loc"]]}
        if "ctx" in entry:  # may hold an exception; FastAPI answers it as text
            entry["ctx"] = json.loads(json.dumps(entry["ctx"], default=str))
        entries.append(entry)
    return entries


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


class AssistantDeleted(BaseModel):
    id: str
    object: Literal["assistant.deleted"]
    deleted: Literal[True]


class JobResult(BaseModel):
    """200: the assistant (created or modified) or, for a batch's delete line, the
    deleted object; 404: a modify or delete whose assistant is gone; 422; 500."""

    status_code: Literal[200, 404, 422, 500]
    body: Assistant | AssistantDeleted | ValidationErrors | ErrorMessage


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
    created: int = Field(description="assistants created (in a create batch, the 200 creates)")
    updated: int = Field(description="assistants changed by an apply or modify line")
    unchanged: int = Field(description="apply lines whose assistant already was as described")
    deleted: int = Field(description="assistants deleted: delete lines and `prune` deletions")


Action = Literal["created", "updated", "unchanged", "deleted"]


class Batch(BaseModel):
    id: str
    object: Literal["batch"]
    mode: Literal["create", "apply"]
    status: Literal["in_progress", "completed", "cancelling", "cancelled"]
    created_at: Unix
    in_progress_at: Unix | None
    completed_at: Unix | None
    cancelling_at: Unix | None
    cancelled_at: Unix | None
    request_counts: RequestCounts
    callback_url: str | None
    metadata: dict[str, Any]
    retry_of: str | None = Field(
        description="the batch whose failed or cancelled lines this one retries"
    )


@with_config(ConfigDict(extra="forbid"))
class BatchRequest(TypedDict, total=False):
    """One request of a batch; an NDJSON line has the same shape (OpenAI Batch
    lines, with `method` and `url`, are accepted too). `POST /v1/assistants`
    (the default) creates, `POST /v1/assistants/{id}` modifies, `DELETE
    /v1/assistants/{id}` deletes."""

    # A TypedDict, not a model: a key may be left out, but one that is given is
    # checked as its type says (a null custom_id is string_type, not absent),
    # and a line that is not an object is pydantic's dict_type.
    custom_id: Annotated[
        CustomId, Field(description="unique in the batch; the 0-based line number when absent")
    ]
    method: Annotated[Literal["POST", "DELETE"], Field(description="POST when absent")]
    # Which assistant a modify or delete names is checked with the method
    # (api.batch_routes): a DELETE must name one.
    url: Annotated[
        str,
        StringConstraints(pattern=r"^/v1/assistants(/[A-Za-z0-9_-]{1,255})?$"),
        Field(description="`/v1/assistants` when absent; a DELETE names an assistant"),
    ]
    # Any JSON value is taken here: what the body holds is the worker's to judge,
    # as for a single create; the document shows what a valid one is. Required
    # but for a DELETE, which has none (api.batch_input says so).
    body: Annotated[
        Any,
        WithJsonSchema({"type": "object", "additionalProperties": True}),
        Field(
            description="a Create or Modify Assistant request (required but for a DELETE); "
            "its fields are checked by the worker, and a request that fails them gets a "
            "422 result like any other job"
        ),
    ]


if TYPE_CHECKING:
    Metadata = dict[str, str] | None
else:
    # The assistant's own metadata rule (at most 16 pairs, keys of at most 64
    # and values of at most 512 characters), so a batch's answers it in the same words.
    Metadata = AssistantCreate.model_fields["metadata"].annotation


class BatchCreate(BaseModel):
    """The JSON form of `POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    requests: Annotated[list[BatchRequest], Field(min_length=1, max_length=50_000)]
    metadata: Metadata = None


class FieldChange(BaseModel):
    """One field's change: its value now and the value the line sets."""

    from_: Any = Field(alias="from", description="the current value (null: absent)")
    to: Any = Field(description="the value set (null: a metadata key removed)")
    cut: Literal[True] | SkipJsonSchema[None] = Field(
        None,
        description="in a plan only: a value longer than 1000 characters (as JSON text) is "
        'shown as its first 1000 and "…[cut: N more characters]"',
    )


FIELD_CHANGES = (
    'for an update: {"<field>": {"from", "to"}} for each field that differs, metadata '
    'key by key ("metadata.<key>")'
)


class BatchResultLine(BaseModel):
    """One line of `GET /v1/batches/{batch_id}/results` (NDJSON)."""

    custom_id: str
    job_id: str | None = Field(description="null for a `prune` deletion")
    status_code: Literal[200, 404, 412, 422, 500] | None
    body: Assistant | AssistantDeleted | ValidationErrors | ErrorMessage | None
    action: Action | None = Field(description="what a 200 did; null if failed or cancelled")
    status: Literal["cancelled"] | SkipJsonSchema[None] = None
    changes: dict[str, FieldChange] | SkipJsonSchema[None] = Field(
        None, description=FIELD_CHANGES + " (whole values; absent on a redelivered update)"
    )


class AssistantDraft(BaseModel):
    """An assistant as a dry run says it would be: a new one has no ids yet."""

    mongo_id: str | None = Field(alias="_id")
    id: str | None
    object: Literal["assistant"] = "assistant"
    created_at: Unix | None
    name: str | None
    description: str | None
    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    file_ids: list[str]
    metadata: dict[str, str]


class PlanLine(BaseModel):
    """One line of a dry run's answer (NDJSON), in input order, then deletions."""

    custom_id: str | None
    action: Literal["create", "update", "unchanged", "delete", "invalid"]
    status_code: Literal[200, 404, 422]
    body: AssistantDraft | AssistantDeleted | ValidationErrors | ErrorMessage
    changes: dict[str, FieldChange] | SkipJsonSchema[None] = Field(None, description=FIELD_CHANGES)


class ExportLine(BaseModel):
    """One line of `GET /v1/assistants/export` (NDJSON): an apply line."""

    custom_id: str = Field(description="the provisioning key, or the id of an unkeyed assistant")
    body: dict[str, Any] = Field(description="the create body that describes the assistant")


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
    time probes it, spaced by the retry schedule, and other deliveries to it wait.
    It is disabled when it answers `410 Gone`, or after failing for
    `WEBHOOK_DISABLE_AFTER_SECONDS` (5 days); while disabled, its events are kept as
    failed deliveries (`error` "endpoint disabled") and never attempted, until `PUT`
    or `POST .../enable` enables it (then `POST /v1/webhook_deliveries/recover`)."""

    object: Literal["webhook_endpoint"]
    url: str
    status: Literal["enabled", "disabled"]
    failing_since: Unix | None = Field(description="first failure since its last success")
    disabled_at: Unix | None
    disabled_reason: str | None = Field(
        description="why it was disabled: `gone: ...` (it answered 410) or `failing: ...`"
    )


class WebhookEndpointDeleted(BaseModel):
    object: Literal["webhook_endpoint.deleted"]
    deleted: Literal[True]


class WebhookSecret(BaseModel):
    """A rotated secret; until `previous_expires_at` the secret it replaced signs
    too (both signatures space-separated in `webhook-signature`). At most two
    secrets sign: a rotation drops the one before the previous at once."""

    object: Literal["webhook_secret"]
    secret: str = Field(description="the new secret, `whsec_...`; shown only this once")
    previous_expires_at: Unix | None


EVENT_TYPES = Literal[
    "job.succeeded", "job.failed", "batch.completed", "batch.cancelled", "webhook.test"
]


class ReceiverAnswer(BaseModel):
    """What the receiver answered, in short. Nothing of the request is kept."""

    status_code: int
    headers: dict[str, str] = Field(description="`content-type` and `retry-after`, if sent")
    body: str = Field(description="the first 1 KiB of the body, as text")
    body_truncated: bool = Field(description="the body was longer than what is shown")


class DeliveryAttempt(BaseModel):
    at: Unix
    status_code: int | None
    error: str | None = Field(description="network failure, timeout or refusal; else null")
    duration_ms: int
    response: ReceiverAnswer | None = Field(description="null when nothing was answered")


class WebhookDelivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    event_type: EVENT_TYPES
    url: str
    status: Literal["pending", "delivered", "failed"]
    error: str | None = Field(
        description='why it failed without an attempt: "endpoint disabled"; else null'
    )
    attempts: list[DeliveryAttempt]
    next_attempt_at: Unix | None = Field(description="set while pending")
    created_at: Unix


class DeliveryRecovered(BaseModel):
    object: Literal["webhook_deliveries.recovery"]
    queued: int = Field(description="failed deliveries made pending again")
    has_more: bool = Field(description="more were left (10,000 a call): call again")


class WebhookDeliveryList(ListPage):
    data: list[WebhookDelivery]


class WebhookTest(BaseModel):
    """What a `webhook.test` event carries."""

    object: Literal["webhook_endpoint.test"]
    url: str
    requested_at: Unix
    message: str


class WebhookEvent(BaseModel):
    """The body POSTed to a callback URL, signed per Standard Webhooks."""

    type: EVENT_TYPES
    timestamp: str = Field(description="ISO 8601")
    data: Job | Batch | WebhookTest


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


# Query strings and headers the client may send, as models of their own so the
# document's parameters come from the same declarations as everything else. The
# query models are also what validates a query string (api.queries).


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The default of a parameter that may be left out. A query string cannot send a
# null, so the field's type takes none: what is given is checked as the type
# says (one error, at the parameter's own loc), what is absent reads as None.
ABSENT: Any = None


class AssistantListQuery(_Query):
    limit: QueryInt = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
    after: Cursor = Field(
        ABSENT, description="an assistant id; one deleted since pages on from where it was"
    )
    before: Cursor = Field(
        ABSENT, description="an assistant id; one deleted since pages on from where it was"
    )


class JobListQuery(_Query):
    batch_id: Cursor = ABSENT
    status: Literal["queued", "in_progress", "succeeded", "failed", "cancelled"] = ABSENT
    limit: QueryInt = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = Field(
        "asc", description="asc: oldest first (a batch's jobs in input order), as ever"
    )
    after: Cursor = Field(ABSENT, description="a job id")
    before: Cursor = Field(ABSENT, description="a job id")


class BatchListQuery(_Query):
    limit: QueryInt = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = Field("desc", description="desc: newest first")
    after: Cursor = Field(ABSENT, description="a batch id")
    before: Cursor = Field(ABSENT, description="a batch id")


class BatchCreateQuery(_Query):
    job_events: Literal["true", "false"] = Field(
        "false", description="also send job.succeeded / job.failed for the batch's jobs"
    )
    mode: Literal["create", "apply"] = Field(
        "create",
        description="apply: each line's custom_id names an assistant (provisioning key, or "
        "id) and the line creates it, updates it to exactly the body, or leaves it unchanged",
    )
    prune: Literal["true", "false"] = Field(
        "false",
        description="with mode=apply: also delete the keyed assistants the manifest leaves out",
    )
    dry_run: Literal["true", "false"] = Field(
        "false",
        description="validate and plan now, change nothing: 200 with one NDJSON plan line "
        "per request",
    )


class CreateQuery(_Query):
    """The query of a single create, modify or delete."""

    dry_run: Literal["true", "false"] = Field(
        "false", description="validate now and answer the plan line; nothing is changed"
    )


class ExportQuery(_Query):
    pass


class BatchResultsQuery(_Query):
    status: Literal["succeeded", "failed", "cancelled"] = ABSENT
    format: Literal["result", "input"] = Field(
        "result",
        description="input: the lines as input JSONL (custom_id, method and url of a "
        "modify or delete, body), to fix and submit again",
    )


class BatchRetryQuery(_Query):
    only: Literal["failed", "cancelled"] = Field(
        ABSENT, description="retry only the lines that failed, or only those cancelled"
    )


class DeliveryListQuery(_Query):
    status: Literal["pending", "delivered", "failed"] = ABSENT
    limit: QueryInt = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = Field("asc", description="asc: oldest first, as ever")
    after: Cursor = Field(ABSENT, description="a delivery id")
    before: Cursor = Field(ABSENT, description="a delivery id")


class PlanHeaders(BaseModel):
    if_match: str | SkipJsonSchema[None] = Field(
        None,
        alias="If-Match",
        description="with mode=apply: the ETag of the dry run reviewed; the batch is "
        "taken only if its plan is still that one (else 412), and each line applies only "
        "if its assistant is still as planned (else that line's 412 result)",
    )


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
