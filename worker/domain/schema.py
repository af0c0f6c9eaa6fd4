"""The Create and Modify Assistant requests and the assistant object, as the origin API had them.

Validation errors are shaped exactly as FastAPI shapes a request-body model's
errors: pydantic's own entries, `loc` prefixed with "body", no `url`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

Name = Annotated[str, StringConstraints(max_length=256)]
Description = Annotated[str, StringConstraints(max_length=512)]
Instructions = Annotated[str, StringConstraints(max_length=32768)]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeInterpreterTool(_Strict):
    type: Literal["code_interpreter"]


class RetrievalTool(_Strict):
    type: Literal["retrieval"]


class FunctionDefinition(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    # Optional but not nullable, as in OpenAI's FunctionObject: the table says
    # "or null" only of the top-level strings. The defaults are never shown:
    # tools are kept as given (exclude_unset).
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


Tool = Annotated[CodeInterpreterTool | RetrievalTool | FunctionTool, Field(discriminator="type")]


class AssistantCreate(_Strict):
    """The request body of `POST /v1/assistants`."""

    model: str
    name: Name | None = None
    description: Description | None = None
    instructions: Instructions | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] = Field(default_factory=list)
    file_ids: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not a null a client could send


class AssistantModify(AssistantCreate):
    """The request body of `POST /v1/assistants/{assistant_id}`: the create schema
    with every field optional. Only the fields sent are changed (`fields_sent`)."""

    # Optional but not nullable, as in OpenAI's ModifyAssistantRequest; the
    # default is never stored, since only fields that were sent are applied
    # (a None default that is not a valid value is what that takes).
    model: str = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]


class Assistant(BaseModel):
    """The assistant object, the 200 body."""

    model_config = ConfigDict(populate_by_name=True)

    mongo_id: str = Field(alias="_id", description="24-hex ObjectId of the stored document")
    id: str
    object: Literal["assistant"] = "assistant"
    created_at: int
    name: str | None
    description: str | None
    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    file_ids: list[str]
    metadata: dict[str, str]


@functools.cache
def request_model(models: tuple[str, ...] = ()) -> type[AssistantCreate]:
    """The request model; with a model list, `model` is a Literal of its names."""
    if not models:
        return AssistantCreate
    return create_model(
        "AssistantCreate",
        __base__=AssistantCreate,
        model=(Literal[models], ...),  # type: ignore[arg-type]
    )


@functools.cache
def modify_model(models: tuple[str, ...] = ()) -> type[AssistantModify]:
    """The modify request model; with a model list, `model` is a Literal of its names."""
    if not models:
        return AssistantModify
    return create_model(
        "AssistantModify",
        __base__=AssistantModify,
        model=(Literal[models], Field(default=None, json_schema_extra=_no_default)),  # type: ignore[arg-type]
    )


def validate_create(
    body: Any, models: Sequence[str] = ()
) -> AssistantCreate | list[dict[str, Any]]:
    """The validated request, or the 422 `detail` list FastAPI would answer."""
    return _validate(request_model(tuple(models)), body)


def validate_modify(
    body: Any, models: Sequence[str] = ()
) -> AssistantModify | list[dict[str, Any]]:
    """The validated modify request, or the 422 `detail` list FastAPI would answer."""
    return _validate(modify_model(tuple(models)), body)


def _validate(model: type[M], body: Any) -> M | list[dict[str, Any]]:
    try:
        # from_attributes=True is how FastAPI validates a body field.
        return model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        errors = [{**err, "loc": ["body", *err["loc"]]} for err in exc.errors(include_url=False)]
        # ctx may hold non-JSON values (exceptions); FastAPI stringifies them.
        detail: list[dict[str, Any]] = json.loads(json.dumps(errors, default=str))
        return detail


def fields_sent(request: AssistantModify) -> dict[str, Any]:
    """The fields a modify request sets, with their values as sent."""
    fields: dict[str, Any] = {}
    for name in AssistantModify.model_fields:
        if name not in request.model_fields_set:
            continue
        fields[name] = tools_as_given(request) if name == "tools" else getattr(request, name)
    return fields


def tools_as_given(request: AssistantCreate) -> list[dict[str, Any]]:
    # exclude_unset keeps exactly the keys the client sent, so tools round-trip.
    return [tool.model_dump(exclude_unset=True) for tool in request.tools]
