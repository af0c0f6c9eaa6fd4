"""`/v1/models`: the models a create may name, from settings."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.context import settings
from api.schemas import Model, ModelList

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models() -> Response:
    config = settings()
    models = [
        Model(id=name, created=config.models_created, owned_by=config.models_owned_by)
        for name in config.models
    ]
    return jsonify(ModelList(data=models).model_dump())
