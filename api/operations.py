"""Every route of the service and what it answers, as API.md states it.

The table is data for `api.openapi`; schemas are never written here, only
named (pydantic models, or `{}` for any JSON value).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from api import schemas as s
from api.webhooks import DeliveryRecovery, WebhookEndpointUpdate
from worker.domain.schema import Assistant

Body = type[BaseModel] | dict[str, Any] | None


@dataclass(frozen=True)
class Answer:
    """One documented response: a model (or a raw schema) under a media type."""

    description: str
    body: Body = None
    media: str = "application/json"
    headers: tuple[str, ...] = ()  # names in HEADERS; a trailing "!" marks required
    also: dict[str, Body] = field(default_factory=dict)  # other media types it may be


@dataclass(frozen=True)
class Operation:
    name: str  # the operationId
    method: str
    path: str
    summary: str
    tag: str
    answers: dict[int, Answer]
    description: str = ""
    query: type[BaseModel] | None = None
    headers: tuple[type[BaseModel], ...] = ()
    body: dict[str, Body] = field(default_factory=dict)  # media type -> schema
    public: bool = False  # no API key needed


DESCRIPTION = """\
Asynchronous, reliable bulk provisioning of OpenAI-style assistants.

A create is recorded as a job and answered at once with `202 Accepted`; a worker
validates it and stores the assistant. The edge itself checks only what it must
(authentication, rate limits, content type, size, headers, JSON syntax,
idempotency): **any JSON value is accepted** and its fields are judged by the
worker, whose `422` detail (FastAPI's shape) becomes the job's result. Clients
poll the job, wait for it with `Prefer: wait=N`, or receive a signed webhook.

Order of the edge's checks: 401, 429, query 422s, 415, 413, header 422s, body 422
(`json_invalid`), 409, then 202 or 503. Every `/v1` answer but 401 carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; every answer
carries `X-Request-ID`.
"""

TAGS = [
    {"name": "assistants", "description": "Create (as jobs), read and delete assistants"},
    {"name": "jobs", "description": "The state and result of each create request"},
    {"name": "batches", "description": "Bulk provisioning"},
    {"name": "models", "description": "The models a create may name"},
    {"name": "webhooks", "description": "Where and how completion events are sent"},
    {"name": "operations", "description": "Health, metrics and this document"},
]

ANY_JSON: dict[str, Any] = {}
TEXT: dict[str, Any] = {"type": "string"}


def _errors(*statuses: int) -> dict[int, Answer]:
    """The error answers of a /v1 route: 401, 422, 429 and 503 always (every
    route answers a query parameter it does not take with 422 at `["query",
    name]`), plus `statuses`."""
    text = {
        401: ("Missing, unknown or revoked API key", ("WWW-Authenticate!",)),
        404: ("No such object for this tenant (another tenant's id included)", ()),
        409: ("The Idempotency-Key was used with a different request", ()),
        413: ("The body is over the size limit", ()),
        415: ("The Content-Type is not one this route takes", ()),
        429: (
            "Rate limit exceeded for this API key; on a request that would add webhook "
            "deliveries, also: the tenant has too many pending",
            ("Retry-After!",),
        ),
        503: ("The store is unavailable; nothing was accepted", ("Retry-After",)),
    }
    answers: dict[int, Answer] = {}
    for status in sorted({401, 422, 429, 503, *statuses}):
        if status == 422:
            answers[422] = Answer(
                "Invalid input: `loc` says where (`body`, `query` or `header`)",
                s.ValidationErrors,
            )
            continue
        description, headers = text[status]
        answers[status] = Answer(description, s.ErrorMessage, headers=headers)
    return answers


def _ok(description: str, body: Body, *headers: str) -> dict[int, Answer]:
    return {200: Answer(description, body, headers=headers)}


def table(create: type[BaseModel], modify: type[BaseModel]) -> list[Operation]:
    """`create` and `modify` are the request models in force (a Literal `model`
    when a model list is set)."""
    job_accepted = Answer(
        "Accepted: the job, `queued` (or as it is now, for an idempotent replay)",
        s.Job,
        # Retry-After while the job runs; a replay may find it finished already.
        headers=("Location!", "Retry-After", "Idempotent-Replayed", "Preference-Applied"),
    )
    return [
        Operation(
            "createAssistant",
            "POST",
            "/v1/assistants",
            "Create an assistant (as a job)",
            "assistants",
            {
                200: Answer(
                    "With `Prefer: wait=N` (or the default wait, when one is set and "
                    "no `Prefer` is sent), the job succeeded in time: the assistant "
                    "(with `Location` of its job). With `?dry_run=true`: one `PlanLine` "
                    "(NDJSON)",
                    Assistant,
                    headers=("Location", "Preference-Applied", "Idempotent-Replayed"),
                    also={"application/x-ndjson": TEXT},
                ),
                202: job_accepted,
                **_errors(409, 413, 415, 422),
            },
            description=(
                "Any JSON body is accepted (202); the schema below is what the worker "
                "checks. With `Prefer: wait=N`, a job that finishes in time is answered "
                "as the origin API would: 200 with the assistant, or 422 with its detail. "
                "With `?dry_run=true` the body is validated now, by the workers' own code, "
                "and the answer is 200 with one `PlanLine` (NDJSON, `action` `create` or "
                "`invalid`); nothing is stored."
            ),
            query=s.CreateQuery,
            headers=(s.SubmitHeaders, s.WaitHeaders, s.TraceHeaders),
            body={"application/json": create},
        ),
        Operation(
            "exportAssistants",
            "GET",
            "/v1/assistants/export",
            "Export every assistant as apply lines",
            "assistants",
            {
                200: Answer(
                    "One `ExportLine` per assistant, in creation order (NDJSON): "
                    '`{"custom_id": key or id, "body": create body}`. Applying it '
                    "(`POST /v1/batches?mode=apply`) changes nothing.",
                    TEXT,
                    media="application/x-ndjson",
                ),
                **_errors(422),
            },
            query=s.ExportQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "modifyAssistant",
            "POST",
            "/v1/assistants/{assistant_id}",
            "Modify an assistant (as a job)",
            "assistants",
            {
                200: Answer(
                    "With `Prefer: wait=N`, the job succeeded in time: the updated "
                    "assistant (with `Location` of its job). With `?dry_run=true`: one "
                    "`PlanLine` (NDJSON)",
                    Assistant,
                    headers=("Location", "Preference-Applied", "Idempotent-Replayed"),
                    also={"application/x-ndjson": TEXT},
                ),
                202: job_accepted,
                **_errors(404, 409, 413, 415, 422),
            },
            description=(
                "OpenAI's modify: every field is optional, the fields sent replace the "
                "stored ones (`metadata` as a whole). An assistant the tenant does not "
                "have is a 404 at once; otherwise any JSON body is accepted (202) and "
                "checked by the worker, as a create is. Modifies of one assistant apply "
                "in the order they were accepted; one that loses a race with a delete "
                "ends with a 404 result. With `?dry_run=true` the body is validated now "
                "and the answer is 200 with one `PlanLine` (NDJSON, `action` `update`, "
                "`unchanged` or `invalid`, status 404 for an assistant the tenant does not "
                "have); nothing is changed."
            ),
            query=s.CreateQuery,
            headers=(s.SubmitHeaders, s.WaitHeaders, s.TraceHeaders),
            body={"application/json": modify},
        ),
        Operation(
            "listAssistants",
            "GET",
            "/v1/assistants",
            "List assistants",
            "assistants",
            {**_ok("A page, ordered by created_at then id", s.AssistantList), **_errors(422)},
            description="An `after` or `before` id that does not exist is 422 at "
            '`["query", name]`.',
            query=s.AssistantListQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "getAssistant",
            "GET",
            "/v1/assistants/{assistant_id}",
            "Read an assistant",
            "assistants",
            {**_ok("The assistant", Assistant), **_errors(404)},
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "deleteAssistant",
            "DELETE",
            "/v1/assistants/{assistant_id}",
            "Delete an assistant",
            "assistants",
            {
                200: Answer(
                    "Deleted. With `?dry_run=true`: one `PlanLine` (NDJSON)",
                    s.AssistantDeleted,
                    also={"application/x-ndjson": TEXT},
                ),
                202: Answer(
                    "Queued behind earlier changes of the assistant and not done within "
                    "MAX_WAIT_SECONDS: the delete's job",
                    s.Job,
                    headers=("Location!", "Retry-After"),
                ),
                **_errors(404),
            },
            description=(
                "Deleted at once, unless changes of the assistant accepted earlier are "
                "still open: then it is queued behind them and answered when done, so "
                "one assistant's changes apply in acceptance order. With `?dry_run=true` "
                "the answer is 200 with one `PlanLine` (NDJSON, `action` `delete`, or "
                "`invalid` with status 404); nothing is deleted."
            ),
            query=s.CreateQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "listModels",
            "GET",
            "/v1/models",
            "List the models a create may name",
            "models",
            {
                **_ok("The configured models; empty when any model is accepted", s.ModelList),
                **_errors(),
            },
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "getJob",
            "GET",
            "/v1/jobs/{job_id}",
            "Read a job",
            "jobs",
            {
                **_ok("The job", s.Job, "Location!", "Retry-After", "Preference-Applied"),
                **_errors(404),
            },
            description="`Retry-After` is set while the job is not finished. `Prefer: "
            "wait=N` long-polls until it finishes or N seconds pass.",
            headers=(s.WaitHeaders, s.TraceHeaders),
        ),
        Operation(
            "listJobs",
            "GET",
            "/v1/jobs",
            "List jobs",
            "jobs",
            {**_ok("A page of jobs, oldest first by default", s.JobList), **_errors(422)},
            query=s.JobListQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "createBatch",
            "POST",
            "/v1/batches",
            "Create a batch",
            "batches",
            {
                200: Answer(
                    "With `?dry_run=true`: the plan, one `PlanLine` per request in input "
                    "order, then (with `prune`) one `delete` line per assistant that would "
                    "go (NDJSON); nothing is created, changed or sent. An apply's plan "
                    "has an `ETag`: its digest, with the version of each assistant it names",
                    TEXT,
                    media="application/x-ndjson",
                    headers=("ETag",),
                ),
                202: Answer(
                    "Accepted: the batch",
                    s.Batch,
                    headers=("Location!", "Idempotent-Replayed"),
                ),
                400: Answer(
                    "An If-Match that names no plan (`*`, weak, malformed, a list), or on "
                    "a dry run or a create batch; any If-None-Match",
                    s.ErrorMessage,
                ),
                412: Answer(
                    "If-Match: the plan computed now is not the one its ETag names; "
                    "nothing was stored. `detail` lists the lines whose plan changed (`loc` "
                    '`["body", <index>]`, with `custom_id` and the `action` planned now; the '
                    'first 100), or `["header", "If-Match"]` for a plan not known',
                    s.ValidationErrors,
                ),
                **_errors(409, 413, 415, 422),
            },
            description=(
                "NDJSON (`application/x-ndjson` or `application/jsonl`: one "
                "`BatchRequest` a line) or JSON (`BatchCreate`). A line creates, or with "
                "OpenAI Batch's `method` and `url` modifies (`POST /v1/assistants/{id}`) "
                "or deletes (`DELETE /v1/assistants/{id}`, no body); a missing assistant "
                "is that line's 404 result. A line that is not an "
                "object with a `body`, or a duplicate `custom_id`, rejects the whole "
                'batch with 422 at `["body", <line>, ...]`; field problems inside a '
                "`body` are that job's 422 result. `Callback-URL` receives "
                "`batch.completed` / `batch.cancelled`.\n\n"
                "`?mode=apply`: each line is `{custom_id, body}`; `custom_id` (required) "
                "names the assistant by provisioning key, or else by id, and the line "
                "creates it (carrying the key), sets it to exactly the body (absent fields "
                "at their defaults) or leaves it unchanged; each result line's `action` "
                "says which. With `prune=true` the tenant's keyed assistants the manifest "
                "does not name are deleted too, as result lines after the input's "
                "(`job_id` null). `?dry_run=true` (either mode) answers the plan at once."
                "\n\n`If-Match: <ETag of an apply's dry run>` applies exactly that plan: "
                "412 if the plan computed now differs; a line whose assistant changes "
                "between this check and its worker's turn is a 412 result, changing nothing."
                "\n\nBatches are served across tenants in turn. 429 with `Retry-After` also "
                "when the tenant's batches already hold `MAX_QUEUED_LINES_PER_TENANT` "
                "lines not yet started (nothing stored)."
            ),
            query=s.BatchCreateQuery,
            headers=(s.SubmitHeaders, s.PlanHeaders, s.TraceHeaders),
            body={
                "application/json": s.BatchCreate,
                "application/x-ndjson": TEXT,
                "application/jsonl": TEXT,
            },
        ),
        Operation(
            "listBatches",
            "GET",
            "/v1/batches",
            "List batches",
            "batches",
            {**_ok("A page of batches, newest first by default", s.BatchList), **_errors(422)},
            query=s.BatchListQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "getBatch",
            "GET",
            "/v1/batches/{batch_id}",
            "Read a batch",
            "batches",
            {
                **_ok("The batch", s.Batch, "Retry-After", "Preference-Applied"),
                **_errors(404),
            },
            description="`Retry-After` is set while the batch is `in_progress` or "
            "`cancelling`. `Prefer: wait=N` long-polls until it is neither (completed or "
            "cancelled) or N seconds pass.",
            headers=(s.WaitHeaders, s.TraceHeaders),
        ),
        Operation(
            "cancelBatch",
            "POST",
            "/v1/batches/{batch_id}/cancel",
            "Cancel a batch",
            "batches",
            {**_ok("The batch, `cancelling` (unchanged when finished)", s.Batch), **_errors(404)},
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "retryBatch",
            "POST",
            "/v1/batches/{batch_id}/retry",
            "Retry a batch's failed or cancelled lines as a new batch",
            "batches",
            {
                202: Answer(
                    "The new batch (`retry_of` the parent), stored and in line",
                    s.Batch,
                    headers=("Location!",),
                ),
                **_errors(404, 409),
            },
            description=(
                "A new batch holding the lines of a finished batch whose results failed "
                "(404, 422, 500) or were cancelled (`only=failed|cancelled`: just those), "
                "with their custom_ids and bodies, in its mode, with its `job_events`, "
                "callback and metadata (not `prune`, which would delete what the retry "
                "leaves out). The parent's results stay as they were; a retry can be "
                "retried. 409 while the parent is `in_progress` or `cancelling`, or when "
                "it has no such lines; 429 as `POST /v1/batches` over the queued-lines quota."
            ),
            query=s.BatchRetryQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "getBatchResults",
            "GET",
            "/v1/batches/{batch_id}/results",
            "Stream a batch's results",
            "batches",
            {
                200: Answer(
                    "One `BatchResultLine` per finished request, in input order (NDJSON); "
                    "with `format=input`, each as an input line instead (`custom_id`, "
                    "`method` and `url` of a modify or delete, `body`), to fix and submit",
                    TEXT,
                    media="application/x-ndjson",
                ),
                **_errors(404, 422),
            },
            query=s.BatchResultsQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "setWebhookEndpoint",
            "PUT",
            "/v1/webhook_endpoint",
            "Set the tenant's webhook endpoint",
            "webhooks",
            {**_ok("The endpoint", s.WebhookEndpoint), **_errors(415, 413, 422)},
            description="The URL is checked like a `Callback-URL`: 422 at "
            '`["body", "url"]` when it is refused.',
            headers=(s.TraceHeaders,),
            body={"application/json": WebhookEndpointUpdate},
        ),
        Operation(
            "getWebhookEndpoint",
            "GET",
            "/v1/webhook_endpoint",
            "Read the tenant's webhook endpoint",
            "webhooks",
            {**_ok("The endpoint", s.WebhookEndpoint), **_errors(404)},
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "enableWebhookEndpoint",
            "POST",
            "/v1/webhook_endpoint/enable",
            "Enable the tenant's webhook endpoint again",
            "webhooks",
            {**_ok("The endpoint, enabled", s.WebhookEndpoint), **_errors(404)},
            description="Forgets its failures; deliveries that failed while it was "
            "disabled can be sent again with `POST /v1/webhook_deliveries/recover` "
            "(or one by one with `POST /v1/webhook_deliveries/{id}/retry`).",
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "deleteWebhookEndpoint",
            "DELETE",
            "/v1/webhook_endpoint",
            "Remove the tenant's webhook endpoint",
            "webhooks",
            {**_ok("Removed", s.WebhookEndpointDeleted), **_errors(404)},
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "rotateWebhookSecret",
            "POST",
            "/v1/webhook_secret/rotate",
            "Rotate the webhook signing secret",
            "webhooks",
            {
                **_ok("The new secret; the old one also signs for 24 h", s.WebhookSecret),
                **_errors(),
            },
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "listWebhookDeliveries",
            "GET",
            "/v1/webhook_deliveries",
            "List webhook deliveries",
            "webhooks",
            {
                **_ok("A page of deliveries, oldest first by default", s.WebhookDeliveryList),
                **_errors(422),
            },
            query=s.DeliveryListQuery,
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "getWebhookDelivery",
            "GET",
            "/v1/webhook_deliveries/{delivery_id}",
            "Read a webhook delivery",
            "webhooks",
            {**_ok("The delivery", s.WebhookDelivery), **_errors(404)},
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "retryWebhookDelivery",
            "POST",
            "/v1/webhook_deliveries/{delivery_id}/retry",
            "Send a failed delivery again (same webhook-id)",
            "webhooks",
            {
                **_ok("The delivery, pending again (unchanged if pending)", s.WebhookDelivery),
                **_errors(404, 409),
            },
            description="409 when the delivery was delivered already.",
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "recoverWebhookDeliveries",
            "POST",
            "/v1/webhook_deliveries/recover",
            "Send the failed deliveries of a time window again (same webhook-ids)",
            "webhooks",
            {
                **_ok("How many were queued", s.DeliveryRecovered),
                **_errors(413, 415, 422),
            },
            description="Every failed delivery created from `since` to `until` (Unix "
            "seconds; `until` defaults to now), of `event_type` if given, is made pending "
            "again, oldest first, due one after another at `WEBHOOK_RECOVER_PER_SECOND` "
            "(10 a second): a receiver back from an outage is not sent it all at once. "
            "At most 10,000 a call (`has_more`).",
            headers=(s.TraceHeaders,),
            body={"application/json": DeliveryRecovery},
        ),
        Operation(
            "testWebhookEndpoint",
            "POST",
            "/v1/webhook_endpoint/test",
            "Send a signed `webhook.test` event to the tenant's endpoint",
            "webhooks",
            {
                202: Answer(
                    "The delivery, pending (`Location` is its URL)",
                    s.WebhookDelivery,
                    headers=("Location!",),
                ),
                **_errors(404),
            },
            description="Sent at once through the same delivery path, address checks and "
            "signing as every event; read the delivery to see the receiver's answer. "
            "While the endpoint is disabled the event is kept as failed, like any other.",
            headers=(s.TraceHeaders,),
        ),
        Operation(
            "healthz",
            "GET",
            "/healthz",
            "The process is up",
            "operations",
            _ok("Up", s.Health),
            public=True,
        ),
        Operation(
            "readyz",
            "GET",
            "/readyz",
            "Redis and MongoDB answer",
            "operations",
            {**_ok("Ready", s.Readiness), 503: Answer("Not ready", s.Readiness)},
            public=True,
        ),
        Operation(
            "metrics",
            "GET",
            "/metrics",
            "Prometheus metrics",
            "operations",
            {200: Answer("Prometheus text exposition", TEXT, media="text/plain")},
            public=True,
        ),
        Operation(
            "openapi",
            "GET",
            "/openapi.json",
            "This document",
            "operations",
            _ok("OpenAPI 3.1", {"type": "object"}),
            public=True,
        ),
        Operation(
            "docs",
            "GET",
            "/docs",
            "This document, rendered",
            "operations",
            {200: Answer("Swagger UI", TEXT, media="text/html")},
            public=True,
        ),
    ]


EVENTS = {
    "job.succeeded": "A job finished with a 200 result (`data.result.body` is the assistant, "
    "or the deleted object of a batch's delete)",
    "job.failed": "A job finished with a 422, 404 (a modify or delete of a missing "
    "assistant) or 500 result",
    "batch.completed": "Every request of a batch has a result",
    "batch.cancelled": "A cancelled batch's started requests have finished",
}


def webhooks(ref: Callable[[Body, Any], dict[str, Any]]) -> dict[str, Any]:
    """The events POSTed to callback URLs, signed per Standard Webhooks."""
    headers = [
        ("webhook-id", "`msg_...`, the same on every retry: dedupe on it"),
        ("webhook-timestamp", "Unix seconds of this attempt"),
        ("webhook-signature", "`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`"),
    ]
    return {
        event: {
            "post": {
                "summary": summary,
                "parameters": [
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "schema": TEXT,
                        **{"description": text},
                    }
                    for name, text in headers
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(s.WebhookEvent, "validation")}},
                },
                "responses": {
                    "2XX": {"description": "Delivered"},
                    "default": {
                        "description": "Retried on network errors, timeouts, 408, 429 and "
                        "5xx; other answers end the delivery"
                    },
                },
            }
        }
        for event, summary in EVENTS.items()
    }
