"""`/openapi.json` and `/docs`: the contract, generated from the models the code uses.

Schemas come from pydantic (`worker.schema` for the request and the assistant,
`api.schemas` for the rest); this module only assembles them into OpenAPI 3.1
from the table of operations in `api.operations`. It documents, it never
gates: nothing here looks at a request. `/docs` is Swagger UI, its assets
served from the `flask-swagger-ui` package by this service, no CDN.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import Blueprint, Flask, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api import operations
from api.context import settings
from api.operations import Body
from worker.domain.schema import modify_model, request_model

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"


def _schema_of(kind: Any) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(kind).json_schema()
    return schema


# Response headers, by name: (schema, description).
HEADERS: dict[str, tuple[dict[str, Any], str]] = {
    "X-Request-ID": (_schema_of(str), "the request's id, as sent or as made"),
    "Location": (_schema_of(str), "where the job (or batch) can be read"),
    "Retry-After": (_schema_of(int), "seconds to wait before asking again"),
    "RateLimit-Limit": (_schema_of(int), "requests allowed per window for this API key"),
    "RateLimit-Remaining": (_schema_of(int), "requests left in the current window"),
    "RateLimit-Reset": (_schema_of(int), "seconds until the window resets"),
    "WWW-Authenticate": (_schema_of(str), "`Bearer`"),
    "Idempotent-Replayed": (_schema_of(str), "`true` when an Idempotency-Key replayed"),
    "Preference-Applied": (_schema_of(str), "`wait=N`: the wait that was applied"),
    "ETag": (
        _schema_of(str),
        "an apply's dry run: the plan's digest, quoted; send it as If-Match to apply it",
    ),
}
RATE = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _header_objects(names: tuple[str, ...]) -> dict[str, Any]:
    objects: dict[str, Any] = {}
    for raw in ("X-Request-ID!", *names):
        name = raw.rstrip("!")
        schema, description = HEADERS[name]
        objects[name] = {
            "description": description,
            "required": raw.endswith("!"),
            "schema": schema,
        }
    return objects


def _parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            prop.pop("default")  # "absent", not a null a client could send
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": where, "required": name in required}
        if description:
            parameter["description"] = description
        parameter["schema"] = prop
        parameters.append(parameter)
    return parameters


class _Components:
    """Collects the models an operation names and turns them into `$ref`s."""

    def __init__(self) -> None:
        self.wanted: dict[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]] = {}

    def ref(self, body: Body, mode: JsonSchemaMode) -> dict[str, Any]:
        if body is None:
            return {}
        if isinstance(body, dict):
            return body
        placeholder: dict[str, Any] = {}
        self.wanted.setdefault((body, mode), placeholder)
        return self.wanted[(body, mode)]

    def resolve(self) -> dict[str, Any]:
        refs, schemas = models_json_schema(list(self.wanted), ref_template=REF)
        for key, placeholder in self.wanted.items():
            placeholder.update(refs[key])
        return dict(sorted(schemas.get("$defs", {}).items()))


def _content(components: _Components, media: str, body: Body, mode: JsonSchemaMode) -> Any:
    return {media: {"schema": components.ref(body, mode)}}


def build(models: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `models` is the configured model list, if any."""

    components = _Components()
    create = request_model(models)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations.table(create, modify_model(models)):
        item: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": [op.tag],
        }
        if op.description:
            item["description"] = op.description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _schema_of(str)}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        if op.query is not None:
            parameters += _parameters(op.query, "query")
        for headers in op.headers:
            parameters += _parameters(headers, "header")
        if parameters:
            item["parameters"] = parameters
        if op.body:
            item["requestBody"] = {
                "required": True,
                "content": {
                    media: {"schema": components.ref(body, "validation")}
                    for media, body in op.body.items()
                },
            }
        item["security"] = [] if op.public else [{"bearerAuth": []}]
        responses: dict[str, Any] = {}
        for status, answer in sorted(op.answers.items()):
            response: dict[str, Any] = {"description": answer.description}
            names = answer.headers
            if op.path.startswith("/v1/") and status != 401:
                names = (*names, *RATE)
            response["headers"] = _header_objects(names)
            if answer.body is not None:
                response["content"] = _content(
                    components, answer.media, answer.body, "serialization"
                )
                for media, body in answer.also.items():
                    response["content"].update(_content(components, media, body, "serialization"))
            responses[str(status)] = response
        item["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = item
    webhooks = operations.webhooks(components.ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "assistant-ingest",
            "version": "1",
            "description": operations.DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "tags": operations.TAGS,
        "paths": paths,
        "webhooks": webhooks,
        "components": {
            "schemas": components.resolve(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key from `assistant-ingest keys create`",
                }
            },
        },
    }


@functools.cache
def document(models: tuple[str, ...]) -> dict[str, Any]:
    return build(models)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(tuple(settings().models)))


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    docs = get_swaggerui_blueprint(
        "/docs",
        "/openapi.json",
        config={"app_name": "assistant-ingest API", "persistAuthorization": True},
        blueprint_name="docs",
    )
    app.register_blueprint(docs)
    # The page itself at /docs as well as /docs/ (its assets are /docs/<file>).
    app.add_url_rule("/docs", "docs_page", app.view_functions["docs.show"])
