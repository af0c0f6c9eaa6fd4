"""Query strings of the list routes, validated by their models in `api.schemas`.

`allow_only` validates the whole query string as FastAPI validates a query
parameter model: the model whose fields are exactly the names given, extra
names forbidden, every problem at once as pydantic reports it, `loc` prefixed
with "query". A name given more than once is validated as the list of its
values, which no field takes, so it is refused as well. `limit`, `choice` and
`text` then return the validated values; their arguments restate, at the call
site, what the model declares, and a call that disagrees with its model is a
programming error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from pydantic import BaseModel, ValidationError

from api import schemas
from api.errors import ApiError
from worker.domain.documents import Doc

_MODELS: dict[frozenset[str], type[BaseModel]] = {
    frozenset(model.model_fields): model
    for model in (
        schemas.AssistantListQuery,
        schemas.JobListQuery,
        schemas.BatchListQuery,
        schemas.BatchCreateQuery,
        schemas.CreateQuery,
        schemas.ExportQuery,
        schemas.BatchResultsQuery,
        schemas.BatchRetryQuery,
        schemas.DeliveryListQuery,
    )
}

View = TypeVar("View", bound=Callable[..., Any])


def own_query(view: View) -> View:
    """Mark a view that validates its query string itself (`allow_only`); every
    other `/v1` route takes none, and `register`'s check refuses any name given."""
    view.validates_query = True  # type: ignore[attr-defined]
    return view


def register(app: Flask) -> None:
    """A `/v1` route that takes no query parameters answers 422 for any given:
    a parameter it would ignore (`?dry_run=true` where there is none) must not
    change what the request does. Registered after auth and rate limits."""

    @app.before_request
    def refuse_unknown_parameters() -> None:
        if not request.args or not request.path.startswith("/v1/") or request.endpoint is None:
            return
        view = current_app.view_functions.get(request.endpoint)
        if view is not None and not getattr(view, "validates_query", False):
            allow_only(())


def allow_only(names: Iterable[str]) -> None:
    """Validate the query string against the route's model; 422 with every problem."""
    known = frozenset(names)
    model = _MODELS.get(known)
    if model is None:
        raise LookupError(f"no query model in api.schemas has exactly the fields {sorted(known)}")
    raw = {name: values[0] if len(values) == 1 else values for name, values in request.args.lists()}
    try:
        g.validated_query = model.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, schemas.detail_of(exc, "query")) from None


def limit(default: int = 20, maximum: int = 100) -> int:
    value: int = _validated("limit", default=default, maximum=maximum)
    return value


def choice(name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
    value: str | None = _validated(name, default=default, enum=sorted(options))
    return value


def text(name: str) -> str | None:
    value: str | None = _validated(name)
    return value


def unknown_cursor(name: str, value: str | None) -> ApiError:
    # Not a rule of the model: the id is well formed but names nothing.
    return ApiError(
        422,
        [
            {
                "type": "value_error",
                "loc": ["query", name],
                "msg": "Value error, no object with this id",
                "input": value,
            }
        ],
    )


def list_object(data: list[Doc], has_more: bool) -> Doc:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _validated(name: str, **declared: Any) -> Any:
    validated: BaseModel | None = g.get("validated_query")
    if validated is None or name not in type(validated).model_fields:
        raise RuntimeError(f"query parameter {name!r} is read before allow_only validated it")
    declaration = _declaration(type(validated), name)
    for key, value in declared.items():
        if declaration.get(key) != value:
            raise RuntimeError(
                f"{type(validated).__name__}.{name} declares {key}={declaration.get(key)!r}, "
                f"its call site says {value!r}"
            )
    return getattr(validated, name)


@functools.cache
def _declaration(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The field's JSON schema (as the document shows it), `enum` sorted."""
    prop: dict[str, Any] = dict(model.model_json_schema()["properties"][name])
    if "enum" in prop:
        prop["enum"] = sorted(prop["enum"])
    elif "const" in prop:
        prop["enum"] = [prop["const"]]
    return prop
